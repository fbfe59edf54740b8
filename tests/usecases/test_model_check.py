"""The gallery's model check (usecases.gallery_model) on a real SQLite gallery, with a stand-in for the
pipeline's one question here: which recognizer Triton serves (or that Triton cannot be asked)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from errors import GalleryModelMismatch, InferenceUnavailable
from gallery.sqlite import SqliteGallery
from gallery.store import EMBEDDING_DIM, ModelFingerprint
from settings import Settings
from usecases.gallery_model import GalleryModel

SERVED = ModelFingerprint("w600k_mbf", "a" * 64)
OTHER = ModelFingerprint("glint360k_r100", "b" * 64)


class ServedRecognizer:
    """Answers `recognizer()` as FacePipeline does: the served fingerprint, or Triton unreachable."""

    def __init__(self, served: ModelFingerprint | None, reachable: bool = True) -> None:
        self.served = served
        self.reachable = reachable
        self.asked = 0

    async def recognizer(self) -> tuple[str, str] | None:
        self.asked += 1
        if not self.reachable:
            raise InferenceUnavailable("Triton readiness failed: Cannot connect to host")
        return (self.served.network, self.served.sha256) if self.served else None


def unit(seed: int, count: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture()
def gallery(tmp_path: Path):
    store = SqliteGallery(tmp_path / "g.db")
    yield store
    store.close()


def test_a_new_gallery_records_the_served_model_and_says_so(gallery, caplog) -> None:
    gallery.create("Ada", {}, unit(1, 2))
    with caplog.at_level(logging.INFO, logger="frtriton"):
        asyncio.run(GalleryModel(ServedRecognizer(SERVED), gallery, Settings()).check_at_start())
    assert gallery.model() == SERVED
    assert "had no model fingerprint; recorded the served recognizer w600k_mbf" in caplog.text
    assert "its 2 face samples" in caplog.text


def test_another_model_stops_the_start_naming_both_models_and_what_to_do(gallery) -> None:
    gallery.claim_model(OTHER)
    gallery.create("Ada", {}, unit(1))
    with pytest.raises(GalleryModelMismatch) as refused:
        asyncio.run(GalleryModel(ServedRecognizer(SERVED), gallery, Settings()).check_at_start())
    message = refused.value.message
    assert "embedded by glint360k_r100 (sha256 bbbbbbbbbbbbbbbb...)" in message
    assert "Triton serves w600k_mbf (sha256 aaaaaaaaaaaaaaaa...)" in message
    assert "GALLERY_ALLOW_MODEL_CHANGE=reembed" in message and "python -m usecases.reembed" in message
    assert "1 of the gallery's 1 face samples (1 person) have no stored crop" in message  # why reembed would fail
    assert gallery.model() == OTHER


def test_an_unfinished_re_embedding_is_a_mismatch_even_when_the_recorded_model_is_served(gallery) -> None:
    gallery.claim_model(SERVED)
    ada = gallery.create("Ada", {}, unit(1, 2))
    gallery.replace_embeddings([(ada.face_ids[0], unit(2)[0])], OTHER.sha256)  # a run towards OTHER, stopped
    with pytest.raises(GalleryModelMismatch, match="1 of its 2 face samples were re-embedded by another recognizer"):
        asyncio.run(GalleryModel(ServedRecognizer(SERVED), gallery, Settings()).check_at_start())


def test_when_triton_is_down_at_start_the_first_request_checks_and_refuses_a_mismatch(gallery, caplog) -> None:
    gallery.claim_model(OTHER)
    gallery.create("Ada", {}, unit(1))
    pipeline = ServedRecognizer(SERVED, reachable=False)
    check = GalleryModel(pipeline, gallery, Settings(gallery_allow_model_change="reembed"))

    async def scenario() -> None:
        await check.check_at_start()  # no exception: the API starts, /health and the key routes work
        with pytest.raises(InferenceUnavailable):
            await check.ensure()  # still down: the request's own 503
        pipeline.reachable = True
        with pytest.raises(GalleryModelMismatch, match="Triton serves w600k_mbf"):
            await check.ensure()  # never re-embeds during a request, even with reembed allowed

    with caplog.at_level(logging.WARNING, logger="frtriton"):
        asyncio.run(scenario())
    assert "checked at the first enrollment or identification" in caplog.text
    assert gallery.model() == OTHER


def test_the_check_runs_once_and_a_recognizer_without_a_checksum_is_not_checked(gallery, caplog) -> None:
    pipeline = ServedRecognizer(SERVED)
    check = GalleryModel(pipeline, gallery, Settings())

    async def twice() -> tuple:
        return await check.ensure(), await check.ensure()

    assert asyncio.run(twice()) == (SERVED, SERVED) and pipeline.asked == 1
    unnamed = GalleryModel(ServedRecognizer(None), gallery, Settings())
    with caplog.at_level(logging.WARNING, logger="frtriton"):
        assert asyncio.run(unnamed.ensure()) is None
    assert "names no sha256" in caplog.text


def test_an_empty_gallery_of_another_model_simply_takes_the_served_one(gallery) -> None:
    gallery.claim_model(OTHER)
    asyncio.run(GalleryModel(ServedRecognizer(SERVED), gallery, Settings()).check_at_start())
    assert gallery.model() == SERVED

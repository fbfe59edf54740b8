"""Integration: re-embedding is resumable. A run stopped after its first committed batch keeps that batch,
and the next run re-embeds only the rest; the search index catches up with every batch (real Triton, real
crops stored by real enrollments, both gallery backends)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, ApiProcess, unused_port
from gallery.factory import open_gallery
from gallery.store import EMBEDDING_DIM, ModelFingerprint
from imaging.decode import decode_image
from pipeline import FacePipeline
from settings import Settings
from triton_service import TritonClient
from usecases.reembed import ReEmbedding, served_fingerprint

pytestmark = pytest.mark.integration

OTHER = ModelFingerprint("glint360k_r100", "f" * 64)


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"GALLERY_DB": str(tmp_path / "g.db")}
    return {"GALLERY_URL": request.getfixturevalue("postgres_url")}


def lfw_people(lfw_dir: Path, count: int) -> list[list[Path]]:
    folders = sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir())
    return [files for folder in folders if len(files := sorted(folder.glob("*.jpg"))) >= 3][:count]


class Stop(Exception):
    """Stands for Ctrl-C between two batches."""


async def probe_embeddings(pipeline: FacePipeline, paths: list[Path]) -> np.ndarray:
    """The main face's embedding of each photo, as /identify would compute it."""
    images = [decode_image(path.read_bytes(), max_pixels=40_000_000) for path in paths]
    found = await pipeline.primary_embeddings(images)
    return np.stack([aligned.embeddings[0] for aligned in found])


def test_a_stopped_re_embedding_keeps_its_committed_batches_and_the_next_run_does_only_the_rest(
    triton, tmp_path: Path, store_env: dict[str, str], lfw_dir: Path
) -> None:
    people = lfw_people(lfw_dir, 3)
    server = ApiProcess({"TRITON_URL": triton.url, **store_env}, tmp_path / "api.log").start()
    try:
        with server.client() as client:
            ids = []
            for person in people:
                uploads = [("images", (f.name, f.read_bytes())) for f in person[:2]]
                ids.append(client.post("/identities", data={"name": person[0].parent.name}, files=uploads).json()["id"])
    finally:
        server.stop()
    gallery = open_gallery(Path(store_env.get("GALLERY_DB", tmp_path / "unused.db")), store_env.get("GALLERY_URL"))

    async def scenario() -> None:
        client = TritonClient(triton.url, 60)
        await client.open()
        try:
            pipeline = FacePipeline(client, Settings())
            served = await served_fingerprint(pipeline)
            probes = await probe_embeddings(pipeline, [p[2] for p in people])
            # Another model made this gallery: every sample replaced by a random vector, recorded as OTHER's.
            faces = [face.id for identity_id in ids for face in gallery.faces(identity_id)]
            noise = np.random.default_rng(3).normal(size=(len(faces), EMBEDDING_DIM)).astype(np.float32)
            gallery.replace_embeddings(list(zip(faces, noise, strict=True)), OTHER.sha256)
            gallery.finish_model_change(OTHER)
            assert [m[0].id for m in gallery.search(probes, 1)] != ids  # the index holds the noise now

            def stop_after_the_first_batch(count: int) -> None:
                raise Stop

            with pytest.raises(Stop):
                await ReEmbedding(pipeline, gallery, batch=2).run(served, stop_after_the_first_batch)
            assert gallery.model() == OTHER  # not recorded before every sample is done
            assert gallery.model_status(served.sha256).pending == len(faces) - 2  # the first batch is kept

            batches: list[int] = []
            done = await ReEmbedding(pipeline, gallery, batch=2).run(served, batches.append)
            assert done == len(faces) - 2 and batches == [2] * (len(faces) // 2 - 1)  # only the rest
            assert gallery.model() == served and gallery.model_status(served.sha256).pending == 0
            # the same gallery object (its search index caught up with the writes) names everyone again
            assert [m[0].id for m in gallery.search(probes, 1)] == ids
        finally:
            await client.close()

    try:
        asyncio.run(scenario())
    finally:
        gallery.close()


def run_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GALLERY_DB": str(tmp_path / "g.db")}
    env.pop("GALLERY_URL", None)
    return subprocess.run([sys.executable, "-m", "usecases.reembed", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_command_refuses_wrong_usage_a_missing_gallery_and_an_unreachable_triton_in_one_line(
    tmp_path: Path,
) -> None:
    assert run_command(tmp_path, "--batch", "0").returncode == 2
    missing = run_command(tmp_path, "--triton-url", f"127.0.0.1:{unused_port()}")
    assert missing.returncode == 1 and "there is no gallery at" in missing.stderr
    assert not (tmp_path / "g.db").exists()  # nothing created
    open_gallery(tmp_path / "g.db", None).close()
    down = run_command(tmp_path, "--triton-url", f"127.0.0.1:{unused_port()}")
    assert down.returncode == 1 and down.stderr.startswith("reembed: Triton") and down.stderr.count("\n") == 1

"""Integration: the client's verification, embedding search and enrollment, and duplicate checks (real Triton).

A server of its own (an empty gallery, so which people match is known), LFW photos.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import ApiProcess, photo
from frtriton_client import (
    Conflict,
    FRTritonClient,
    InvalidRequest,
    NoFaceDetected,
    NotFound,
    RecognizerModel,
    Unauthorized,
)

pytestmark = pytest.mark.integration

SIMILARITY_TOLERANCE = 1e-4


def lfw_people(lfw_dir: Path, minimum: int, count: int) -> list[list[Path]]:
    chosen = [files for folder in sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir())
              if len(files := sorted(folder.glob("*.jpg"))) >= minimum]
    if len(chosen) < count:
        pytest.skip(f"LFW has fewer than {count} people with {minimum} photos")
    return chosen[:count]


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("client-vectors")
    process = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}, folder / "api.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module", params=[False, True], ids=["form", "json"])
def client(server: ApiProcess, request: pytest.FixtureRequest) -> Iterator[FRTritonClient]:
    with FRTritonClient(server.url, api_key=server.key, timeout=60, send_json=request.param) as fr:
        yield fr
        for person in fr.list_identities(limit=1000).identities:  # each variant starts from an empty gallery
            fr.delete(person.id)


@pytest.fixture(scope="module")
def people(lfw_dir: Path) -> list[list[Path]]:
    return lfw_people(lfw_dir, 4, 2)


def test_embeddings_name_their_model_and_search_as_identify_does(client: FRTritonClient, people) -> None:
    ada, bob = people
    enrolled = client.enroll("ada", ada[:2])
    assert enrolled.possible_duplicates == ()
    embedded = client.embed(ada[2])
    assert isinstance(embedded.model, RecognizerModel) and embedded.model.name == "w600k_mbf"
    assert len(embedded.model.sha256) == 64
    [named] = client.identify_embeddings([embedded.embedding], top_k=3, model_sha256=embedded.model.sha256)
    [face] = [f for f in client.identify(ada[2], top_k=3) if f.identity is not None]
    assert named.identity is not None and named.identity.id == face.identity.id == enrolled.id
    assert named.identity.similarity == pytest.approx(face.identity.similarity, abs=SIMILARITY_TOLERANCE)
    [stranger] = client.identify_embeddings([client.embed(bob[0]).embedding])
    assert stranger.identity is None and [m.id for m in stranger.matches] == [enrolled.id]
    with pytest.raises(Conflict) as refused:
        client.identify_embeddings([embedded.embedding], model_sha256="0" * 64)
    assert refused.value.status == 409 and "cannot be compared" in refused.value.detail


def test_verify_says_whether_the_photo_is_the_enrolled_person(client: FRTritonClient, people) -> None:
    ada, bob = people
    enrolled = client.enroll("ada-v", ada[:2])
    same = client.verify(enrolled.id, ada[3])
    assert same.same_person is True and same.identity_id == enrolled.id and same.identity_name == "ada-v"
    assert same.similarity >= same.threshold and len(same.face.landmarks) == 5
    other = client.verify(enrolled.id, bob[0])
    assert other.same_person is False and other.similarity < other.threshold
    assert client.verify(enrolled.id, bob[0], threshold=-1.0).same_person is True
    with pytest.raises(NotFound):
        client.verify("no-such-person", ada[3])
    with pytest.raises(NoFaceDetected):
        client.verify(enrolled.id, blank_png())


def blank_png() -> bytes:
    """A valid image with no face in it."""
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def test_enrollment_from_embeddings_and_the_duplicate_check(client: FRTritonClient, people) -> None:
    _, bob = people
    batch = client.embed_batch(bob[:2])
    model = batch[0].model
    made = client.enroll_embeddings("bob", [e.embedding for e in batch], metadata={"via": "vectors"},
                                    model_sha256=model.sha256)
    assert made.num_faces == 2 and len(made.face_ids) == 2 and made.rejected == ()
    assert client.get_identity(made.id).metadata == {"via": "vectors"}
    [face] = [f for f in client.identify(bob[2]) if f.identity is not None]
    assert face.identity.id == made.id

    total = client.list_identities().total
    with pytest.raises(Conflict) as refused:
        client.enroll("bob again", bob[3], reject_duplicates=True)
    assert made.id in refused.value.detail
    with pytest.raises(Conflict):
        client.enroll_embeddings("bob again", [client.embed(bob[3]).embedding], reject_duplicates=True)
    assert client.list_identities().total == total  # nothing stored

    again = client.enroll("bob again", bob[3])
    assert [m.id for m in again.possible_duplicates] == [made.id]
    assert 0 < again.possible_duplicates[0].similarity <= 1

    for vectors in ([[0.0] * 512], [[0.1] * 100], [[math.inf] * 512]):
        with pytest.raises((InvalidRequest, ValueError)):  # inf cannot even be written as JSON by the client
            client.enroll_embeddings("X", vectors)
    with pytest.raises(Conflict):
        client.enroll_embeddings("X", [batch[0].embedding], model_sha256="f" * 64)
    assert client.list_identities().total == total + 1


def test_the_new_methods_need_the_key(server: ApiProcess) -> None:
    with FRTritonClient(server.url, api_key="wrong") as anonymous:
        with pytest.raises(Unauthorized):
            anonymous.identify_embeddings([[0.1] * 512])
        with pytest.raises(Unauthorized):
            anonymous.enroll_embeddings("X", [[0.1] * 512])
        with pytest.raises(Unauthorized):
            anonymous.verify("someone", photo("yaoming.jpg"))

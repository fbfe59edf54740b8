"""Integration: the scale-out layout for real: one Triton, one PostgreSQL gallery, two API processes.

What deploy/ sets up (Compose `scale-out`, Kubernetes): API replicas that share nothing but
Triton and the pgvector gallery, so a person enrolled through one replica is known to every
other at once, and a deletion through one is seen by all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ApiProcess, TritonProcess
from vision.detections import primary_face

pytestmark = pytest.mark.integration

REPLICAS = 2
API_KEY = "scale-out-test-key"  # one Secret shared by every replica
AUTH = {"X-API-Key": API_KEY}


@pytest.fixture()
def replicas(triton: TritonProcess, postgres_url: str, tmp_path: Path) -> Iterator[list[httpx.Client]]:
    """Two API processes configured like the deployment: external Triton, shared PostgreSQL gallery."""
    env = {"TRITON_URL": triton.url, "GALLERY_URL": postgres_url, "API_KEY": API_KEY}
    servers, clients = [], []
    try:
        for index in range(REPLICAS):
            folder = tmp_path / f"api{index}"
            folder.mkdir()
            servers.append(ApiProcess(env, folder / "api.log").start())
            clients.append(httpx.Client(base_url=servers[-1].url, timeout=60, headers=AUTH))
        yield clients
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop()


def two_photos_of_one_person(lfw_dir: Path) -> tuple[str, Path, Path]:
    for folder in sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        if len(photos) >= 2:
            return folder.name, photos[0], photos[1]
    pytest.skip("no LFW person with two photos")


def identify_subject(client: httpx.Client, photo: Path) -> tuple[dict, float]:
    """The answer for the photo's subject (LFW photos can show bystanders) and the threshold used."""
    response = client.post("/identify", files={"image": (photo.name, photo.read_bytes())})
    assert response.status_code == 200, response.text
    body = response.json()
    boxes = np.array([f["bbox"] for f in body["faces"]], np.float32)
    return body["faces"][primary_face(boxes, (body["height"], body["width"]))], body["threshold"]


def test_both_replicas_are_ready_on_the_shared_triton(replicas: list[httpx.Client]) -> None:
    for client in replicas:
        assert client.get("/ready").status_code == 200


def test_replicas_sharing_a_key_volume_share_the_key_the_first_one_generated(
    triton: TritonProcess, postgres_url: str, tmp_path: Path
) -> None:
    """Compose's scale-out without API_KEY: every replica mounts one volume for the key file."""
    shared = tmp_path / "key-volume" / "api_key"
    env = {"TRITON_URL": triton.url, "GALLERY_URL": postgres_url, "API_KEY_FILE": str(shared)}
    servers = []
    try:
        for index in range(REPLICAS):
            folder = tmp_path / f"api{index}"
            folder.mkdir()
            servers.append(ApiProcess(env, folder / "api.log").start())
        key = shared.read_text().strip()
        for server in servers:
            assert server.key == key
            with server.client(keyed=False) as client:
                assert client.get("/identities").status_code == 401
                assert client.get("/identities", headers={"X-API-Key": key}).json()["total"] == 0
    finally:
        for server in servers:
            server.stop()


def test_person_enrolled_through_one_replica_is_identified_through_another(
    replicas: list[httpx.Client], lfw_dir: Path
) -> None:
    first, second = replicas
    name, enrolled_photo, other_photo = two_photos_of_one_person(lfw_dir)
    response = first.post(
        "/identities", data={"name": name}, files=[("images", (enrolled_photo.name, enrolled_photo.read_bytes()))],
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    identity_id = response.json()["id"]

    # A different photo of the same person, through the other process.
    face, threshold = identify_subject(second, other_photo)
    assert face["identity"] is not None, face
    assert face["identity"]["id"] == identity_id and face["identity"]["name"] == name
    assert face["identity"]["similarity"] >= threshold
    assert second.get(f"/identities/{identity_id}").json()["name"] == name


def test_person_deleted_through_one_replica_is_gone_from_another(
    replicas: list[httpx.Client], lfw_dir: Path
) -> None:
    first, second = replicas
    name, enrolled_photo, other_photo = two_photos_of_one_person(lfw_dir)
    enrolled = first.post(
        "/identities", data={"name": name}, files=[("images", (enrolled_photo.name, enrolled_photo.read_bytes()))],
        headers=AUTH,
    ).json()
    assert identify_subject(first, other_photo)[0]["identity"]["id"] == enrolled["id"]

    assert second.delete(f"/identities/{enrolled['id']}", headers=AUTH).json() == {"deleted": 1}

    assert first.get(f"/identities/{enrolled['id']}").status_code == 404
    assert first.get("/identities").json() == {"total": 0, "identities": []}
    face, _ = identify_subject(first, other_photo)
    assert face["identity"] is None and face["matches"] == []

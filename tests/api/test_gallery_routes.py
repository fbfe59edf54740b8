"""Integration: the gallery over HTTP on real Triton, real photos, real processes (kill, restart)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ApiProcess, photo
from vision.detections import primary_face

pytestmark = pytest.mark.integration


def people(lfw_dir: Path, minimum: int, count: int, exactly: bool = False) -> list[list[Path]]:
    folders = sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir())
    chosen = []
    for folder in folders:
        files = sorted(folder.glob("*.jpg"))
        if (len(files) == minimum) if exactly else (len(files) >= minimum):
            chosen.append(files)
    return chosen[:count]


def files(*paths: Path) -> list[tuple[str, tuple[str, bytes]]]:
    return [("images", (p.name, p.read_bytes())) for p in paths]


def subject(body: dict) -> dict:
    """The face /identify found that is the photo's subject (LFW photos can show bystanders)."""
    boxes = np.array([f["bbox"] for f in body["faces"]], np.float32)
    return body["faces"][primary_face(boxes, (body["height"], body["width"]))]


def enroll(client: httpx.Client, name: str, paths: list[Path], **extra) -> httpx.Response:
    return client.post("/identities", data={"name": name, **extra}, files=files(*paths))


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment selecting one gallery backend: both run the same API tests."""
    if request.param == "sqlite":
        return {"GALLERY_DB": str(tmp_path / "g.db")}
    return {"GALLERY_URL": request.getfixturevalue("postgres_url")}


def orphan_identities(env: dict[str, str]) -> int:
    """People without a face sample: what a half-applied enrollment would leave."""
    query = "SELECT COUNT(*) FROM identities i WHERE NOT EXISTS (SELECT 1 FROM faces f WHERE f.identity_id = i.id)"
    if "GALLERY_URL" in env:
        import psycopg

        with psycopg.connect(env["GALLERY_URL"]) as conn:
            return conn.execute(query).fetchone()[0]
    check = sqlite3.connect(env["GALLERY_DB"])
    try:
        assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return check.execute(query).fetchone()[0]
    finally:
        check.close()


@pytest.fixture()
def gallery_api(triton, tmp_path: Path, store_env) -> Iterator[tuple[httpx.Client, ApiProcess]]:
    server = ApiProcess({"TRITON_URL": triton.url, **store_env}, tmp_path / "api.log")
    server.start()
    with server.client() as client:  # with the key the server generated on its first start
        yield client, server
    server.stop()


def test_enrolled_people_are_named_and_strangers_are_unknown(gallery_api, lfw_dir: Path) -> None:
    client, _ = gallery_api
    known = people(lfw_dir, 3, 8)
    strangers = people(lfw_dir, 1, 8, exactly=True)
    ids = {}
    for person in known:
        response = enroll(client, person[0].parent.name, person[:2], metadata='{"source": "lfw"}')
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["num_faces"] == 2 and body["rejected"] == [], body
        ids[body["id"]] = person[0].parent.name
    for person in known:
        answer = client.post("/identify", files={"image": ("p.jpg", person[2].read_bytes())}, data={"top_k": 3})
        face = subject(answer.json())
        assert face["identity"] is not None and face["identity"]["name"] == person[0].parent.name
        assert len(face["matches"]) == 3 and face["matches"][0]["id"] == face["identity"]["id"]
    unknown = 0
    for [stranger] in strangers:
        face = subject(client.post("/identify", files={"image": ("s.jpg", stranger.read_bytes())}).json())
        unknown += face["identity"] is None
        assert face["matches"]  # the nearest people are still listed
    assert unknown == len(strangers)


def test_enrollment_rejects_unusable_images_with_reasons(gallery_api, lfw_dir: Path) -> None:
    client, _ = gallery_api
    [person] = people(lfw_dir, 3, 1)
    response = client.post(
        "/identities",
        data={"name": "Mixed"},
        files=[*files(person[0]), ("images", ("t1.jpg", photo("t1.jpg").read_bytes())), ("images", ("x", b"junk"))],
    )
    assert response.status_code == 201
    body = response.json()
    assert body["num_faces"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    assert "more than one face" in body["rejected"][0]["reason"]
    assert "not a decodable image" in body["rejected"][1]["reason"]


def test_enrollment_without_a_usable_face_stores_nothing(gallery_api) -> None:
    client, _ = gallery_api
    blank = np.full((100, 100, 3), 127, np.uint8).tobytes()
    uploads = [("images", ("group.jpg", photo("t1.jpg").read_bytes())), ("images", ("b.raw", blank))]
    response = client.post("/identities", data={"name": "Nobody"}, files=uploads)
    assert response.status_code == 422 and "nothing was stored" in response.json()["detail"]
    assert client.get("/identities").json()["total"] == 0


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"name": ""}, "name"),
        ({"name": "X", "metadata": "[1, 2]"}, "JSON object"),
        ({"name": "X", "metadata": "{"}, "JSON"),
    ],
)
def test_enrollment_validates_its_fields(gallery_api, data: dict, fragment: str) -> None:
    client, _ = gallery_api
    response = client.post("/identities", data=data, files=files(photo("yaoming.jpg")))
    assert response.status_code == 422 and fragment in response.text


def test_list_get_patch_add_merge_and_delete(gallery_api, lfw_dir: Path) -> None:
    client, _ = gallery_api
    [a, b] = people(lfw_dir, 4, 2)
    first = enroll(client, "First", a[:1]).json()
    second = enroll(client, "Second", a[1:2]).json()
    other = enroll(client, "Other", b[:2]).json()

    listing = client.get("/identities", params={"limit": 2, "offset": 0}).json()
    assert listing["total"] == 3 and [i["name"] for i in listing["identities"]] == ["First", "Second"]
    assert client.get(f"/identities/{first['id']}").json()["num_faces"] == 1
    assert client.get("/identities/does-not-exist").status_code == 404

    patched = client.patch(f"/identities/{first['id']}", json={"name": "Renamed", "metadata": {"team": "x"}}).json()
    assert patched["name"] == "Renamed" and patched["metadata"] == {"team": "x"}
    added = client.post(f"/identities/{first['id']}/faces", files=files(a[2])).json()
    assert added["num_faces"] == 2

    merged = client.post(f"/identities/{first['id']}/merge", data={"source_id": second["id"]})
    assert merged.status_code == 200 and merged.json()["num_faces"] == 3
    assert client.get(f"/identities/{second['id']}").status_code == 404
    assert client.post(f"/identities/{first['id']}/merge", data={"source_id": first["id"]}).status_code == 422
    assert client.post(f"/identities/{first['id']}/merge", data={"source_id": "missing"}).status_code == 404

    face = subject(client.post("/identify", files={"image": ("q.jpg", a[3].read_bytes())}).json())
    assert face["identity"]["id"] == first["id"]

    assert client.delete(f"/identities/{other['id']}").json() == {"deleted": 1}
    assert client.delete(f"/identities/{other['id']}").status_code == 404
    refused = client.delete("/identities")
    assert refused.status_code == 400 and client.get("/identities").json()["total"] == 1
    assert client.delete("/identities", params={"confirm": "true"}).json() == {"deleted": 1}
    assert client.get("/identities").json() == {"total": 0, "identities": []}


def test_identify_answers_for_every_face_of_a_group_photo(gallery_api) -> None:
    client, _ = gallery_api
    body = client.post("/identify", files={"image": ("t1.jpg", photo("t1.jpg").read_bytes())}).json()
    assert len(body["faces"]) == 6 and all(f["identity"] is None and f["matches"] == [] for f in body["faces"])
    assert body["threshold"] == pytest.approx(0.30)


def test_the_gallery_survives_a_restart(triton, tmp_path: Path, store_env) -> None:
    env = {"TRITON_URL": triton.url, **store_env}
    server = ApiProcess(env, tmp_path / "a.log").start()
    with server.client() as client:
        made = enroll(client, "Yao", [photo("yaoming.jpg")]).json()
    server.stop()
    server = ApiProcess(env, tmp_path / "b.log").start()
    try:
        with server.client() as client:
            [face] = client.post("/identify", files={"image": ("y.jpg", photo("yaoming.jpg").read_bytes())}).json()[
                "faces"
            ]
            assert face["identity"]["id"] == made["id"]
    finally:
        server.stop()


def test_killing_the_server_during_enrollments_loses_no_committed_person(triton, tmp_path, lfw_dir, store_env) -> None:
    env = {"TRITON_URL": triton.url, **store_env}
    server = ApiProcess(env, tmp_path / "a.log").start()
    pictures = [p for person in people(lfw_dir, 2, 30) for p in person[:2]]
    confirmed: dict[str, int] = {}
    stop = threading.Event()

    def writer(offset: int) -> None:
        with server.client(timeout=30) as client:
            for i in range(offset, len(pictures) - 1, 3):
                if stop.is_set():
                    return
                try:
                    response = enroll(client, f"p{i}", pictures[i : i + 2])
                except httpx.HTTPError:
                    return
                if response.status_code == 201:
                    confirmed[response.json()["id"]] = response.json()["num_faces"]

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(confirmed) < 6 and time.monotonic() < deadline and any(t.is_alive() for t in threads):
        time.sleep(0.05)
    assert len(confirmed) >= 6, "enrollments did not get going"
    os.kill(server.process.pid, signal.SIGKILL)  # mid-stream: other enrollments are in flight
    stop.set()
    for thread in threads:
        thread.join()
    server.process.wait()

    assert orphan_identities(env) == 0  # no half-written person (and SQLite's integrity check passes)
    server = ApiProcess(env, tmp_path / "b.log").start()
    try:
        with server.client() as client:
            for identity_id, num_faces in confirmed.items():
                assert client.get(f"/identities/{identity_id}").json()["num_faces"] == num_faces
    finally:
        server.stop()


def test_concurrent_enrollments_and_deletes_from_several_clients(gallery_api, lfw_dir: Path) -> None:
    client, server = gallery_api
    pictures = [person[0] for person in people(lfw_dir, 2, 24)]
    created: list[str] = []
    lock = threading.Lock()

    def worker(chunk: list[Path]) -> None:
        with server.client() as own:
            for index, path in enumerate(chunk):
                made = enroll(own, path.parent.name, [path]).json()
                if index % 2:
                    assert own.delete(f"/identities/{made['id']}").status_code == 200
                else:
                    with lock:
                        created.append(made["id"])

    threads = [threading.Thread(target=worker, args=(pictures[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listing = client.get("/identities", params={"limit": 1000}).json()
    assert sorted(i["id"] for i in listing["identities"]) == sorted(created)


def test_the_approximate_index_is_saved_and_used_again_after_a_restart(triton, tmp_path: Path, lfw_dir: Path) -> None:
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db"), "GALLERY_INDEX": "ann"}
    known = people(lfw_dir, 3, 4)
    server = ApiProcess(env, tmp_path / "a.log").start()
    try:
        with server.client() as client:
            ids = {enroll(client, p[0].parent.name, p[:2]).json()["id"]: p[0].parent.name for p in known}
            first = [subject(client.post("/identify", files={"image": ("p.jpg", p[2].read_bytes())}).json())
                     for p in known]
            assert 'frtriton_gallery_index{index="ann"' in client.get("/metrics").text
    finally:
        server.stop()  # SIGTERM: the lifespan saves the index
    assert (tmp_path / "g.db.index" / "manifest.json").exists()
    server = ApiProcess(env, tmp_path / "b.log").start()
    try:
        with server.client() as client:
            again = [subject(client.post("/identify", files={"image": ("p.jpg", p[2].read_bytes())}).json())
                     for p in known]
            metrics = client.get("/metrics").text
    finally:
        server.stop()
    assert 'loaded_from_file="true"' in metrics and 'index="ann"' in metrics
    assert [f["identity"]["name"] for f in again] == [p[0].parent.name for p in known]
    assert [f["identity"]["id"] for f in again] == [f["identity"]["id"] for f in first]
    assert set(ids) == {f["identity"]["id"] for f in again}
    assert [f["matches"] for f in again] == [f["matches"] for f in first]

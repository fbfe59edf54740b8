"""Integration: per-sample faces over HTTP (list, remove, the ids enrollments answer) on real Triton and
real LFW photos, on both gallery backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_gallery_routes import enroll, files, gallery_api, people, store_env, subject  # noqa: F401  (helpers, fixtures)

from vision.head_pose import head_pose
from vision.quality import face_size

pytestmark = pytest.mark.integration

JUNK = ("images", ("notes.txt", b"not an image"))


def landmarks_of(client, path: Path):
    """The main face's five landmarks as /detect finds them (the enrollment gate sees the same)."""
    import numpy as np

    body = client.post("/detect", files={"image": (path.name, path.read_bytes())}).json()
    return np.array(subject(body)["landmarks"], np.float32)


def test_enrollment_answers_the_new_face_ids_and_each_face_lists_its_quality_pose_and_source(
    gallery_api, lfw_dir: Path  # noqa: F811 (the fixture imported above)
) -> None:
    client, _ = gallery_api
    person = people(lfw_dir, 3, 2)[1]  # (the first has a profile photo, refused)
    made = client.post("/identities", data={"name": "Ada"}, files=[*files(person[0]), JUNK, *files(person[1])])
    assert made.status_code == 201, made.text
    body = made.json()
    assert len(body["face_ids"]) == 2 and [r["index"] for r in body["rejected"]] == [1]
    listed = client.get(f"/identities/{body['id']}/faces")
    assert listed.status_code == 200
    faces = listed.json()["faces"]
    assert [f["id"] for f in faces] == body["face_ids"]  # in the order of the accepted images
    assert [f["source"] for f in faces] == [person[0].name, person[1].name]
    for face, path in zip(faces, person[:2], strict=True):
        assert set(face) == {"id", "created_at", "quality", "pose", "source", "has_crop"}
        assert face["has_crop"] is True and face["created_at"]
        quality, pose = face["quality"], face["pose"]
        assert quality["sharpness"] >= 20 and 0.5 <= quality["detection_score"] <= 1  # it passed the gate
        # the gate's own numbers, stored as measured (the same landmarks give the same size and pose)
        points = landmarks_of(client, path)
        assert quality["face_size"] == pytest.approx(face_size(points), rel=0.01)
        yaw, pitch, roll = head_pose(points)
        assert (pose["yaw"], pose["pitch"], pose["roll"]) == pytest.approx((yaw, pitch, roll), abs=0.5)

    added = client.post(f"/identities/{body['id']}/faces", files=files(person[2]))
    assert added.status_code == 200 and added.json()["num_faces"] == 3, added.text
    [new_id] = added.json()["face_ids"]
    faces = client.get(f"/identities/{body['id']}/faces").json()["faces"]
    assert [f["id"] for f in faces] == [*body["face_ids"], new_id] and faces[-1]["source"] == person[2].name


def test_a_face_can_be_removed_but_not_the_last_one_and_refused_removals_change_nothing(
    gallery_api, lfw_dir: Path  # noqa: F811 (the fixture imported above)
) -> None:
    client, _ = gallery_api
    [a, b] = people(lfw_dir, 3, 2)
    ada = enroll(client, "Ada", a[:2]).json()
    bob = enroll(client, "Bob", b[:1]).json()
    before = {p["id"]: client.get(f"/identities/{p['id']}/faces").json() for p in (ada, bob)}

    refusals = [
        (f"/identities/{ada['id']}/faces/{bob['face_ids'][0]}", 404, "has no face with id"),  # Bob's face
        (f"/identities/{ada['id']}/faces/999999999", 404, "has no face with id"),
        (f"/identities/nobody/faces/{ada['face_ids'][0]}", 404, "no identity"),
        (f"/identities/{ada['id']}/faces/abc", 422, "face_id"),
        (f"/identities/{ada['id']}/faces/0", 422, "face_id"),
        (f"/identities/{ada['id']}/faces/{2**70}", 422, "face_id"),
        (f"/identities/{bob['id']}/faces/{bob['face_ids'][0]}", 409, "delete the identity instead"),
    ]
    for url, status, fragment in refusals:
        answer = client.delete(url)
        assert answer.status_code == status, (url, answer.text)
        assert fragment in str(answer.json()["detail"]), (url, answer.text)
    assert client.get("/identities/nobody/faces").status_code == 404
    assert {p["id"]: client.get(f"/identities/{p['id']}/faces").json() for p in (ada, bob)} == before

    removed = client.delete(f"/identities/{ada['id']}/faces/{ada['face_ids'][1]}")
    assert removed.status_code == 200 and removed.json()["num_faces"] == 1
    assert [f["id"] for f in client.get(f"/identities/{ada['id']}/faces").json()["faces"]] == ada["face_ids"][:1]
    face = subject(client.post("/identify", files={"image": ("q.jpg", a[2].read_bytes())}).json())
    assert face["identity"]["id"] == ada["id"]  # still named by the sample left

    last = client.delete(f"/identities/{ada['id']}/faces/{ada['face_ids'][0]}")
    assert last.status_code == 409 and "delete the identity instead" in last.json()["detail"]
    assert client.get(f"/identities/{ada['id']}").json()["num_faces"] == 1

"""Integration: every face's `pose` and `quality` on a real Triton with real photos, against what
enrollment says of the same photos.

The server has its own gallery: the enrollments here are the point of comparison, not state for
other tests.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ApiProcess, TritonProcess, photo

pytestmark = pytest.mark.integration

PORTRAIT = "deepfunneled/Sheila_Wellstone/Sheila_Wellstone_0001.jpg"  # frontal (a broad smile), one face
POSE_KEYS = {"yaw", "pitch", "roll"}
QUALITY_KEYS = {"sharpness", "face_size", "enrollable", "reasons"}
ROTATION = 20  # degrees, clockwise on screen
ROLL_TOLERANCE = 3  # degrees: the landmarks of the rotated photo are found again, not rotated


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def shrunk(data: bytes) -> bytes:
    """A quarter of the size (faces of ~30 px), as the enrollment-quality benchmarks shrink."""
    image = pixels(data)
    return jpeg(cv2.resize(image, (image.shape[1] // 4, image.shape[0] // 4), interpolation=cv2.INTER_AREA))


def blurred(data: bytes) -> bytes:
    return jpeg(cv2.GaussianBlur(pixels(data), (0, 0), 3))


@pytest.fixture(scope="module")
def client(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("attributes")
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "g.db")}, folder / "api.log").start()
    with server.client() as keyed:
        yield keyed
    server.stop()


@pytest.fixture(scope="module")
def portrait(lfw_dir: Path) -> bytes:
    return (lfw_dir / PORTRAIT).read_bytes()


def post(client: httpx.Client, path: str, data: bytes, **params) -> dict:
    answer = client.post(path, params=params, files={"image": ("p.jpg", data)})
    assert answer.status_code == 200, answer.text
    return answer.json()


def main_face(client: httpx.Client, data: bytes) -> dict:
    """The face enrollment judges: the photo's main face, as /embedding picks it."""
    return post(client, "/embedding", data)["face"]


def enroll(client: httpx.Client, *photos: bytes) -> httpx.Response:
    return client.post("/identities", data={"name": "attributes"},
                       files=[("images", (f"{i}.jpg", data)) for i, data in enumerate(photos)])


# --------------------------------------------------------------------------- the enrollment gate, face by face
def test_a_frontal_portrait_is_enrollable_and_enrollment_takes_it(client: httpx.Client, portrait: bytes) -> None:
    face = main_face(client, portrait)
    assert face["quality"]["enrollable"] is True and face["quality"]["reasons"] == []
    assert face["quality"]["face_size"] >= 40 and face["quality"]["sharpness"] >= 20
    assert abs(face["pose"]["yaw"]) < 20 and abs(face["pose"]["pitch"]) < 20 and abs(face["pose"]["roll"]) < 20
    answer = enroll(client, portrait)
    assert answer.status_code == 201 and answer.json()["rejected"] == [], answer.text


@pytest.mark.parametrize(("degrade", "reason"), [(shrunk, "face too small ("), (blurred, "face too blurred (")])
def test_a_degraded_copy_is_not_enrollable_for_the_very_reason_enrollment_gives(
    client: httpx.Client, portrait: bytes, degrade: Callable[[bytes], bytes], reason: str
) -> None:
    data = degrade(portrait)
    face = main_face(client, data)
    assert face in post(client, "/detect", data)["faces"]  # /detect judges it alike
    quality = face["quality"]
    assert quality["enrollable"] is False and quality["reasons"][0].startswith(reason), quality
    refused = enroll(client, data)
    assert refused.status_code == 422
    expected = f"no usable face in any image (image 0: {quality['reasons'][0]}); nothing was stored"
    assert refused.json() == {"detail": expected}


def test_the_reasons_of_rejected_photos_are_their_faces_first_reasons(client: httpx.Client, portrait: bytes) -> None:
    small, soft = shrunk(portrait), blurred(portrait)
    answer = enroll(client, small, portrait, soft)
    assert answer.status_code == 201, answer.text
    assert answer.json()["rejected"] == [
        {"index": 0, "reason": main_face(client, small)["quality"]["reasons"][0]},
        {"index": 2, "reason": main_face(client, soft)["quality"]["reasons"][0]},
    ]
    assert "face too small (" in answer.json()["rejected"][0]["reason"]


def test_the_group_rule_is_about_the_photo_so_no_face_names_it(client: httpx.Client) -> None:
    data = photo("t1.jpg").read_bytes()
    faces = post(client, "/detect", data)["faces"]
    assert any(f["quality"]["enrollable"] for f in faces)
    assert not any("more than one face" in r for f in faces for r in f["quality"]["reasons"])
    refused = enroll(client, data)
    assert refused.status_code == 422 and "more than one face (6)" in refused.json()["detail"]


# --------------------------------------------------------------------------- one face, one answer, every route
def test_every_route_gives_a_face_the_same_pose_and_quality(client: httpx.Client) -> None:
    group, single = photo("t1.jpg").read_bytes(), photo("yaoming.jpg").read_bytes()
    detected = post(client, "/detect", group)["faces"]
    identified = post(client, "/identify", group)["faces"]
    shown = lambda faces: [(f["bbox"], f["pose"], f["quality"]) for f in faces]  # noqa: E731
    assert shown(identified) == shown(detected) and len(detected) == 6
    main, other = main_face(client, group), main_face(client, single)
    assert main in detected
    compared = client.post("/face-similarity", files={"image_a": ("a.jpg", group), "image_b": ("b.jpg", single)})
    assert (compared.json()["face_a"], compared.json()["face_b"]) == (main, other)
    batch = client.post("/embeddings", files=[("images", ("a.jpg", group)), ("images", ("b.jpg", single))])
    assert [r["face"] for r in batch.json()["results"]] == [main, other]


def test_pose_and_quality_are_finite_numbers_on_every_face_of_the_group_photos(client: httpx.Client) -> None:
    for name in ("t1.jpg", "players.jpg"):
        faces = post(client, "/detect", photo(name).read_bytes())["faces"]
        assert len(faces) > 5, name
        for face in faces:
            pose, quality = face["pose"], face["quality"]
            assert set(pose) == POSE_KEYS and set(quality) == QUALITY_KEYS
            numbers = [*pose.values(), quality["sharpness"], quality["face_size"]]
            assert all(isinstance(v, float) and math.isfinite(v) for v in numbers), face
            assert -90 <= pose["yaw"] <= 90 and -90 <= pose["pitch"] <= 90 and -180 <= pose["roll"] <= 180
            assert quality["sharpness"] >= 0 and quality["face_size"] > 0
            assert quality["enrollable"] is (quality["reasons"] == [])


def test_a_photo_turned_clockwise_turns_roll_positive(client: httpx.Client, portrait: bytes) -> None:
    upright = main_face(client, portrait)["pose"]["roll"]
    clockwise = Image.open(io.BytesIO(portrait)).rotate(-ROTATION, expand=True)  # PIL: positive is anticlockwise
    turned = jpeg(np.asarray(clockwise))
    assert main_face(client, turned)["pose"]["roll"] == pytest.approx(upright + ROTATION, abs=ROLL_TOLERANCE)


def test_json_bodies_get_the_same_bytes_attributes_included(client: httpx.Client, portrait: bytes) -> None:
    small = shrunk(portrait)
    for path, data in (("/detect", small), ("/embedding", small), ("/identify", photo("t1.jpg").read_bytes())):
        form = client.post(path, files={"image": ("p.jpg", data)})
        as_json = client.post(path, json={"image": base64.b64encode(data).decode()})
        assert form.status_code == as_json.status_code == 200
        assert as_json.content == form.content and b'"reasons"' in form.content, path
    images = [portrait, small]
    form = client.post("/embeddings", files=[("images", (f"{i}.jpg", d)) for i, d in enumerate(images)])
    as_json = client.post("/embeddings", json={"images": [base64.b64encode(d).decode() for d in images]})
    assert form.status_code == as_json.status_code == 200 and as_json.content == form.content


def test_the_openapi_schema_documents_pose_and_quality_with_examples(client: httpx.Client) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name, keys in (("HeadPose", POSE_KEYS), ("EnrollmentQuality", QUALITY_KEYS)):
        properties = schemas[name]["properties"]
        assert set(properties) == keys and set(schemas[name]["required"]) == keys
        assert all(p.get("description") and "examples" in p for p in properties.values()), name
    assert "clockwise" in schemas["HeadPose"]["properties"]["roll"]["description"]
    assert "image's right" in schemas["HeadPose"]["properties"]["yaw"]["description"]
    assert "looking down" in schemas["HeadPose"]["properties"]["pitch"]["description"]
    for model in ("DetectedFace", "MeasuredFace", "IdentifiedFace"):
        assert {"pose", "quality"} <= set(schemas[model]["required"]), model
    assert set(schemas["Face"]["properties"]) == {"bbox", "score", "landmarks"}  # /liveness: as it was

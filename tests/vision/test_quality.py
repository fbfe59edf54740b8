"""Enrollment quality: the pure measures (quality.py) on hand-made landmarks and crops, and the
checks through POST /identities on real photos and real Triton."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ApiProcess, TritonProcess, photo
from vision.alignment import ARCFACE_TEMPLATE
from vision.quality import FaceQuality, QualityLimits, face_quality, face_size, quality_problem

FRONTAL = ARCFACE_TEMPLATE.astype(np.float64)
LIMITS = QualityLimits(min_size=40, min_sharpness=20, max_yaw=0.45, max_pitch=0.3)


def rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - points.mean(axis=0)) @ rotation.T + points.mean(axis=0)


def textured_crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("landmarks", "size"),
    [
        (FRONTAL, 112.0),  # the template itself: the crop is the face
        (FRONTAL * 0.5, 56.0),  # half as large in the photo
        (FRONTAL * 3 + 400, 336.0),  # larger and elsewhere
        (rotate(FRONTAL * 2, 35), 224.0),  # a rolled head is as large as an upright one
    ],
)
def test_face_size_is_the_side_the_crop_covers(landmarks: np.ndarray, size: float) -> None:
    assert face_size(landmarks) == pytest.approx(size, rel=1e-6)


@pytest.mark.parametrize(
    ("nose_shift", "yaw_sign"),
    [
        ((0.0, 0.0), 0),  # frontal
        ((12.0, 0.0), 1),  # nose towards the right eye
        ((-12.0, 0.0), -1),  # towards the left eye
    ],
)
@pytest.mark.parametrize("roll", [0.0, 30.0, -60.0])  # rolled heads: alignment removes the roll
def test_yaw_follows_the_nose_whatever_the_roll(nose_shift, yaw_sign: int, roll: float) -> None:
    points = FRONTAL.copy()
    points[2] += nose_shift
    quality = face_quality(rotate(points, roll), textured_crop())
    assert np.sign(round(quality.yaw, 6)) == yaw_sign
    assert abs(quality.pitch) < 0.01  # a sideways nose barely moves the least-squares alignment


def test_pitch_is_zero_for_the_template_and_grows_as_the_nose_drops() -> None:
    points = FRONTAL.copy()
    points[2, 1] += 10
    assert face_quality(FRONTAL, textured_crop()).pitch == pytest.approx(0, abs=1e-9)
    assert face_quality(points, textured_crop()).pitch > 0.2


def test_blur_lowers_sharpness() -> None:
    sharp = textured_crop()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    assert face_quality(FRONTAL, blurred).sharpness < 0.05 * face_quality(FRONTAL, sharp).sharpness


@pytest.mark.parametrize(
    ("quality", "fragment"),
    [
        (FaceQuality(size=120, sharpness=150, yaw=0.05, pitch=0.02), None),
        (FaceQuality(size=40, sharpness=20, yaw=0.45, pitch=-0.3), None),  # on every limit: still fine
        (FaceQuality(size=25, sharpness=150, yaw=0, pitch=0), "too small"),
        (FaceQuality(size=120, sharpness=8, yaw=0, pitch=0), "too blurred"),
        (FaceQuality(size=120, sharpness=150, yaw=-0.7, pitch=0), "turned too far sideways"),
        (FaceQuality(size=120, sharpness=150, yaw=0, pitch=0.4), "tilted too far"),
        (FaceQuality(size=10, sharpness=1, yaw=1, pitch=1), "too small"),  # the first problem is named
    ],
)
def test_quality_problem_names_the_first_failed_check(quality: FaceQuality, fragment: str | None) -> None:
    problem = quality_problem(quality, LIMITS)
    assert problem is None if fragment is None else fragment in problem


# --------------------------------------------------------------------------- through the API
def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def portrait() -> np.ndarray:
    return np.asarray(Image.open(photo("yaoming.jpg")).convert("RGB"))


def portrait_with_bystander() -> bytes:
    """The portrait, large and central, with a half-size copy in the top-left corner."""
    face = portrait()
    canvas = np.full((face.shape[0] * 2, face.shape[1] * 3, 3), 200, np.uint8)
    top, left = face.shape[0] // 2, face.shape[1]
    canvas[top : top + face.shape[0], left : left + face.shape[1]] = face
    small = cv2.resize(face, (face.shape[1] // 2, face.shape[0] // 2), interpolation=cv2.INTER_AREA)
    canvas[: small.shape[0], : small.shape[1]] = small
    return jpeg(canvas)


@pytest.fixture(scope="module")
def enroll_api(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("quality")
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "g.db")}, folder / "api.log").start()
    with server.client() as client:
        yield client
    server.stop()


@pytest.mark.integration
def test_enrollment_rejects_small_blurred_turned_and_group_photos_with_reasons(
    enroll_api: httpx.Client, lfw_dir: Path
) -> None:
    face = portrait()
    uploads = {
        "sharp portrait": jpeg(face),
        "blurred": jpeg(cv2.GaussianBlur(face, (0, 0), 4)),
        "tiny": jpeg(cv2.resize(face, (face.shape[1] // 8, face.shape[0] // 8), interpolation=cv2.INTER_AREA)),
        "profile": (lfw_dir / "deepfunneled/Kosuke_Kitajima/Kosuke_Kitajima_0002.jpg").read_bytes(),
        "group": photo("t1.jpg").read_bytes(),
    }
    answer = enroll_api.post(
        "/identities", data={"name": "Yao"}, files=[("images", (name, data)) for name, data in uploads.items()]
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["num_faces"] == 1  # only the sharp portrait
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert "too blurred" in reasons[1]
    assert "too small" in reasons[2]
    assert "turned too far sideways" in reasons[3]
    assert "more than one face" in reasons[4]


@pytest.mark.integration
def test_a_bystander_is_allowed_unless_single_face_only(
    enroll_api: httpx.Client, triton: TritonProcess, tmp_path: Path
) -> None:
    data = portrait_with_bystander()
    relaxed = enroll_api.post("/identities", data={"name": "Yao"}, files=[("images", ("b.jpg", data))])
    assert relaxed.status_code == 201 and relaxed.json()["rejected"] == []
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db"), "ENROLL_SINGLE_FACE_ONLY": "true"}
    strict_api = ApiProcess(env, tmp_path / "api.log").start()
    try:
        strict = httpx.post(
            f"{strict_api.url}/identities", data={"name": "Yao"}, files=[("images", ("b.jpg", data))],
            headers=strict_api.auth,
        )
    finally:
        strict_api.stop()
    assert strict.status_code == 422 and "more than one face (2)" in strict.json()["detail"]

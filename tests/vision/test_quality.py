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
from settings import Settings
from vision.alignment import ARCFACE_TEMPLATE
from vision.head_pose import (
    CAMERA_DISTANCE_MM,
    FACE_MODEL,
    angles,
    full_fit,
    head_pose,
    project,
    rotation_matrix,
)
from vision.quality import FaceQuality, QualityLimits, face_quality, face_size, quality_problem

FRONTAL = ARCFACE_TEMPLATE.astype(np.float64)
LIMITS = QualityLimits(min_size=40, min_sharpness=20, max_yaw=60, max_pitch=45)
CAMERA = np.array([[1500.0, 0, 320], [0, 1500.0, 240], [0, 0, 1]])  # 640x480, focal 1500 px


def photographed(
    yaw: float, pitch: float, roll: float, model: np.ndarray = FACE_MODEL, distance: float = CAMERA_DISTANCE_MM
) -> np.ndarray:
    """(5, 2) landmarks of the 3D face model posed so and seen from `distance` mm."""
    return project(model, rotation_matrix(yaw, pitch, roll), np.array([0.0, 0.0, distance]), CAMERA)


def smiling(lift_mm: float = 10.0, widen_mm: float = 8.0) -> np.ndarray:
    """The face model with its mouth corners lifted and drawn apart, as a broad smile does."""
    model = FACE_MODEL.copy()
    model[3:, 1] -= lift_mm
    model[3, 0] -= widen_mm / 2
    model[4, 0] += widen_mm / 2
    return model


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


# --------------------------------------------------------------------------- head pose
@pytest.mark.parametrize(
    ("yaw", "pitch", "roll"),
    [
        (0, 0, 0),
        (30, 0, 0),
        (-30, 0, 0),
        (60, 0, 0),  # past the yaw limit
        (0, 20, 0),
        (0, 30, 0),  # looking down: beyond ~35 degrees the estimate saturates (see below)
        (0, -20, 0),
        (0, -45, 0),
        (0, 0, 25),
        (0, 0, -40),
        (25, 15, -10),
        (-45, -10, 20),
        (20, -30, 30),
    ],
)
def test_head_pose_recovers_the_pose_the_model_was_photographed_in(yaw: float, pitch: float, roll: float) -> None:
    assert head_pose(photographed(yaw, pitch, roll)) == pytest.approx((yaw, pitch, roll), abs=1.0)


@pytest.mark.parametrize("distance", [400.0, 4000.0])  # a close portrait, a telephoto shot
def test_head_pose_is_close_whatever_the_camera_distance(distance: float) -> None:
    for pose in [(30, 0, 0), (0, 20, 0), (0, -20, 0), (25, 15, -10), (-45, -10, 20)]:
        assert head_pose(photographed(*pose, distance=distance)) == pytest.approx(pose, abs=3.0)


def test_the_signs_are_as_documented() -> None:
    frontal = photographed(0, 0, 0)
    turned, down, clockwise = photographed(30, 0, 0), photographed(0, 20, 0), photographed(0, 0, 20)
    eyes_mid = lambda points: points[:2].mean(axis=0)  # noqa: E731
    assert turned[2, 0] - eyes_mid(turned)[0] > 0  # positive yaw: the nose towards the image's right
    # positive pitch (looking down): the nose tip drops towards the mouth, which comes nearer the eyes
    assert down[2, 1] - eyes_mid(down)[1] > frontal[2, 1] - eyes_mid(frontal)[1]
    assert down[3:, 1].mean() - down[2, 1] < frontal[3:, 1].mean() - frontal[2, 1]
    assert clockwise[1, 1] > clockwise[0, 1]  # positive roll: the image-right eye lower
    assert angles(rotation_matrix(12, -7, 3)) == pytest.approx((12, -7, 3))


def test_head_pose_is_zero_for_the_alignment_template() -> None:
    assert head_pose(FRONTAL) == pytest.approx((0, 0, 0), abs=0.5)


@pytest.mark.parametrize("lift_mm", [5.0, 10.0, 15.0])
def test_a_frontal_smile_is_not_read_as_a_nod(lift_mm: float) -> None:
    landmarks = photographed(0, 0, 0, smiling(lift_mm))
    assert angles(full_fit(landmarks))[1] > lift_mm / 3  # a plain five-point fit sees the head nodding down
    assert head_pose(landmarks) == pytest.approx((0, 0, 0), abs=3.0)


def test_a_smile_does_not_hide_a_real_nod_or_turn() -> None:
    yaw, pitch, roll = head_pose(photographed(25, -20, 5, smiling()))
    assert (yaw, pitch, roll) == pytest.approx((25, -20, 5), abs=4.0)
    assert head_pose(photographed(0, 20, 0, smiling()))[1] > 8


def test_a_long_nose_is_read_as_a_small_nod_only() -> None:
    model = FACE_MODEL.copy()
    model[2, 1] += 6  # nose tip 6 mm lower: a longer nose than the average face
    assert 0 < head_pose(photographed(0, 0, 0, model))[1] < 15


def test_a_head_bowed_far_still_reads_as_bowed() -> None:
    # Past ~40 degrees the nose tip climbs back towards the eyes, so the estimate falls back
    # (about 20 at 60), but its sign stays right.
    for pitch in (50, 60):
        assert head_pose(photographed(0, pitch, 0))[1] > 15


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
    level = face_quality(points, textured_crop())
    if yaw_sign == 0:
        assert abs(quality.yaw) < 1
    else:  # 12 px of a 35 px eye distance is a clear turn
        assert np.sign(quality.yaw) == yaw_sign and abs(quality.yaw) > 20
    assert abs(quality.pitch) < 1  # a sideways nose is no nod
    assert quality.yaw == pytest.approx(level.yaw, abs=0.1)  # roll changes nothing else
    assert quality.roll == pytest.approx(level.roll + roll, abs=0.1)


def test_pitch_is_zero_for_the_template_and_grows_as_the_nose_drops() -> None:
    points = FRONTAL.copy()
    points[2, 1] += 10
    assert face_quality(FRONTAL, textured_crop()).pitch == pytest.approx(0, abs=0.5)
    assert face_quality(points, textured_crop()).pitch > 20


def test_blur_lowers_sharpness() -> None:
    sharp = textured_crop()
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    assert face_quality(FRONTAL, blurred).sharpness < 0.05 * face_quality(FRONTAL, sharp).sharpness


@pytest.mark.parametrize(
    ("quality", "fragment"),
    [
        (FaceQuality(size=120, sharpness=150, yaw=5, pitch=2), None),
        (FaceQuality(size=40, sharpness=20, yaw=60, pitch=-45), None),  # on every limit: still fine
        (FaceQuality(size=25, sharpness=150, yaw=0, pitch=0), "too small"),
        (FaceQuality(size=120, sharpness=8, yaw=0, pitch=0), "too blurred"),
        (FaceQuality(size=120, sharpness=150, yaw=-70, pitch=0), "turned too far sideways"),
        (FaceQuality(size=120, sharpness=150, yaw=0, pitch=50), "tilted too far"),
        (FaceQuality(size=10, sharpness=1, yaw=90, pitch=90), "too small"),  # the first problem is named
    ],
)
def test_quality_problem_names_the_first_failed_check(quality: FaceQuality, fragment: str | None) -> None:
    problem = quality_problem(quality, LIMITS)
    assert problem is None if fragment is None else fragment in problem


@pytest.mark.parametrize(
    ("quality", "message"),
    [
        (FaceQuality(size=25.4, sharpness=150, yaw=0, pitch=0), "face too small (25 px; at least 40 px)"),
        (FaceQuality(size=39.8, sharpness=150, yaw=0, pitch=0), "face too small (39.8 px; at least 40 px)"),
        (FaceQuality(size=120, sharpness=8.2, yaw=0, pitch=0), "face too blurred (sharpness 8; at least 20)"),
        (FaceQuality(size=120, sharpness=150, yaw=-71.2, pitch=0),
         "face turned too far sideways (yaw 71°; at most 60°)"),
        (FaceQuality(size=120, sharpness=150, yaw=60.3, pitch=0),
         "face turned too far sideways (yaw 60.3°; at most 60°)"),
        (FaceQuality(size=120, sharpness=150, yaw=0, pitch=52), "face tilted too far down (pitch 52°; at most 45°)"),
        (FaceQuality(size=120, sharpness=150, yaw=0, pitch=-48.6), "face tilted too far up (pitch 49°; at most 45°)"),
    ],
)
def test_every_refusal_names_the_measured_value_and_the_limit(quality: FaceQuality, message: str) -> None:
    assert quality_problem(quality, LIMITS) == message


def test_angle_settings_are_degrees_and_the_old_unit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENROLL_MAX_YAW", "35")
    monkeypatch.setenv("ENROLL_MAX_PITCH", "30")
    settings = Settings()
    assert (settings.enroll_max_yaw, settings.enroll_max_pitch) == (35, 30)
    monkeypatch.setenv("ENROLL_MAX_YAW", "0.45")  # eye distances, before degrees
    with pytest.raises(ValueError, match="ENROLL_MAX_YAW=0.45 looks like the old unit: it is now in degrees"):
        Settings()


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


SMILING_FRONTAL = ["Sheila_Wellstone_0001", "Theodore_Tweed_Roosevelt_0002", "John_Travolta_0005", "Rick_Perry_0002"]


@pytest.mark.integration
@pytest.mark.parametrize("folder", ["deepfunneled", "original"])
def test_smiling_frontal_lfw_portraits_get_a_small_pitch_and_are_enrolled(
    enroll_api: httpx.Client, lfw_dir: Path, folder: str
) -> None:
    """Broad smiles that a plain five-point fit reads as a 30-43 degree nod (the issue's refusals)."""
    files = {name: (lfw_dir / folder / name.rsplit("_", 1)[0] / f"{name}.jpg").read_bytes() for name in SMILING_FRONTAL}
    for name, data in files.items():
        answer = enroll_api.post("/embedding", files={"image": ("p.jpg", data)})
        landmarks = np.array(answer.json()["face"]["landmarks"])
        assert angles(full_fit(landmarks))[1] > 25, name
        assert abs(head_pose(landmarks)[1]) < 20, name
    enrolled = enroll_api.post(
        "/identities", data={"name": "smiles"}, files=[("images", (n, d)) for n, d in files.items()]
    )
    assert enrolled.status_code == 201 and enrolled.json()["rejected"] == [], enrolled.text
    looking_up = (lfw_dir / folder / "Luis_Horna/Luis_Horna_0002.jpg").read_bytes()
    answer = enroll_api.post("/embedding", files={"image": ("p.jpg", looking_up)})
    landmarks = np.array(answer.json()["face"]["landmarks"])
    assert head_pose(landmarks)[1] < -25  # a head plainly tipped back still reads so

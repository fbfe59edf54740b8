"""Every face's attributes (vision/attributes.py) and the checks they share with the enrollment gate
(vision/quality.py), on hand-made landmarks and crops."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from settings import Settings
from vision.alignment import ARCFACE_TEMPLATE, align_faces
from vision.attributes import FaceAttributes, face_attributes, image_face_attributes
from vision.quality import FaceQuality, QualityLimits, face_quality, quality_problem, quality_problems

LIMITS = QualityLimits(min_size=40, min_sharpness=20, max_yaw=60, max_pitch=45)
FRONTAL = ARCFACE_TEMPLATE.astype(np.float64)


def textured(seed: int = 0, shape: tuple[int, ...] = (112, 112, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_every_failed_check_is_listed_in_the_gates_order_and_enrollment_names_the_first() -> None:
    worst = FaceQuality(size=10, sharpness=1, yaw=90, pitch=-90)
    assert quality_problems(worst, LIMITS) == [
        "face too small (10 px; at least 40 px)",
        "face too blurred (sharpness 1; at least 20)",
        "face turned too far sideways (yaw 90°; at most 60°)",
        "face tilted too far up (pitch 90°; at most 45°)",
    ]
    assert quality_problem(worst, LIMITS) == quality_problems(worst, LIMITS)[0]
    blurred_and_turned = FaceQuality(size=120, sharpness=8.2, yaw=-71.2, pitch=0)
    assert quality_problems(blurred_and_turned, LIMITS) == [
        "face too blurred (sharpness 8; at least 20)", "face turned too far sideways (yaw 71°; at most 60°)"]


@pytest.mark.parametrize(
    "quality",
    [FaceQuality(size=120, sharpness=150, yaw=5, pitch=2), FaceQuality(size=40, sharpness=20, yaw=-60, pitch=45)],
)
def test_a_face_within_every_limit_has_no_reasons(quality: FaceQuality) -> None:
    assert quality_problems(quality, LIMITS) == [] and quality_problem(quality, LIMITS) is None
    assert FaceAttributes(quality, ()).enrollable


def test_the_limits_are_the_enroll_settings() -> None:
    settings = Settings(enroll_min_face_size=55, enroll_min_sharpness=31, enroll_max_yaw=35, enroll_max_pitch=25)
    assert QualityLimits.from_settings(settings) == QualityLimits(55, 31, 35, 25)
    assert QualityLimits.from_settings(Settings()) == LIMITS  # the defaults


def test_each_face_is_measured_on_its_own_crop_as_enrollment_measures() -> None:
    landmarks = np.stack([FRONTAL, FRONTAL * 0.25, FRONTAL * 2])  # 112 px, 28 px, 224 px faces
    sharp, blurred = textured(1), cv2.GaussianBlur(textured(2), (0, 0), 3)
    crops = np.stack([sharp, sharp, blurred])
    measured = face_attributes(landmarks, crops, LIMITS)
    assert [m.quality for m in measured] == [face_quality(p, c) for p, c in zip(landmarks, crops, strict=True)]
    assert measured[0].enrollable and measured[0].reasons == ()
    assert not measured[1].enrollable and measured[1].reasons == ("face too small (28 px; at least 40 px)",)
    assert not measured[2].enrollable and measured[2].reasons[0].startswith("face too blurred (sharpness ")
    assert all(m.reasons == tuple(quality_problems(m.quality, LIMITS)) for m in measured)


def test_no_face_gives_no_attributes() -> None:
    assert face_attributes(np.zeros((0, 5, 2)), np.zeros((0, 112, 112, 3), np.uint8), LIMITS) == []


@pytest.mark.parametrize("crop_size", [112, 128])
def test_a_face_without_a_crop_is_aligned_first_at_the_recognizers_size(crop_size: int) -> None:
    image = textured(3, (400, 500, 3))
    landmarks = np.stack([FRONTAL * 1.5 + 100, FRONTAL + 300]).astype(np.float32)
    expected = face_attributes(landmarks, align_faces(image, landmarks, crop_size), LIMITS)
    assert image_face_attributes(image, landmarks, crop_size, LIMITS) == expected
    assert all(np.isfinite(list(vars(m.quality).values())).all() for m in expected)

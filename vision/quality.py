"""Is a detected face good enough to enroll? Size, sharpness and head pose, as numbers.

Pure functions of one face: its five landmarks (in image pixels) and its aligned crop (what
the recognizer embeds). Thresholds live in `Settings` (ENROLL_*); each default is grounded in
recognition by `benchmarks/quality_reject_curve.py` on the LFW dev-test photos (README,
Enrollment quality): a check refuses no more than the photos that cost recognition accuracy.

* size: the side, in image pixels, of the square the aligned crop was cut from (the alignment
  scale, from all five landmarks, so a turned head does not shrink it the way the distance
  between the eyes does). A 40 px face is magnified almost three times into a 112 px crop.
* sharpness: variance of the Laplacian of the grey aligned crop. The crop has a fixed size,
  so blur from focus, motion or magnification all lower it alike.
* yaw, pitch, roll: head pose in degrees from the landmarks against a 3D face model
  (`vision.head_pose`, which documents the signs): yaw positive turned towards the image's
  right, pitch positive looking down, roll positive clockwise on screen. 0 is the pose of the
  ArcFace template. Roll is reported only: alignment rotates it away before recognition.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vision.alignment import ARCFACE_SIZE, ARCFACE_TEMPLATE, similarity_transform
from vision.head_pose import head_pose


@dataclass(frozen=True)
class FaceQuality:
    size: float  # pixels
    sharpness: float  # Laplacian variance of the 112x112 grey crop
    yaw: float  # degrees, positive turned towards the image's right
    pitch: float  # degrees, positive looking down
    roll: float = 0.0  # degrees, positive clockwise on screen

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in vars(self).items()}


def face_size(landmarks: np.ndarray) -> float:
    """Side in image pixels of the square the aligned crop of a face (5, 2 landmarks) covers."""
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # template pixels per image pixel
    return ARCFACE_SIZE / max(scale, 1e-9)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of an aligned crop (S, S, 3) uint8 RGB, resized to 112x112 grey."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] != ARCFACE_SIZE:
        grey = cv2.resize(grey, (ARCFACE_SIZE, ARCFACE_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def face_quality_from(landmarks: np.ndarray, crop_sharpness: float) -> FaceQuality:
    """landmarks (5, 2) in image pixels and the crop's `sharpness` -> FaceQuality."""
    yaw, pitch, roll = head_pose(landmarks)
    return FaceQuality(face_size(landmarks), crop_sharpness, yaw, pitch, roll)


def face_quality(landmarks: np.ndarray, crop: np.ndarray) -> FaceQuality:
    """landmarks (5, 2) in image pixels; crop (S, S, 3) uint8 aligned RGB -> FaceQuality."""
    return face_quality_from(landmarks, sharpness(crop))


@dataclass(frozen=True)
class QualityLimits:
    min_size: float  # pixels
    min_sharpness: float
    max_yaw: float  # degrees, either way
    max_pitch: float  # degrees, either way

    @classmethod
    def from_settings(cls, settings) -> QualityLimits:
        """The enrollment gate's limits: ENROLL_MIN_FACE_SIZE, _MIN_SHARPNESS, _MAX_YAW, _MAX_PITCH of a
        `Settings` (any object with those attributes): one place for enrollment and every face's `quality`."""
        return cls(
            settings.enroll_min_face_size, settings.enroll_min_sharpness, settings.enroll_max_yaw,
            settings.enroll_max_pitch,
        )


def _shown(value: float, limit: float) -> str:
    """value rounded to whole units, or to as many decimals as it takes to differ from limit."""
    for digits in range(4):
        text = f"{value:.{digits}f}"
        if float(text) != limit:
            return text
    return text


def quality_problems(quality: FaceQuality, limits: QualityLimits) -> list[str]:
    """Every check a face fails, in the order they are made (size, sharpness, yaw, pitch); [] when it
    passes them all.

    Each names the measured value and the limit; a value on the limit passes.
    """
    problems = []
    if quality.size < limits.min_size:
        problems.append(f"face too small ({_shown(quality.size, limits.min_size)} px; at least {limits.min_size:g} px)")
    if quality.sharpness < limits.min_sharpness:
        shown = _shown(quality.sharpness, limits.min_sharpness)
        problems.append(f"face too blurred (sharpness {shown}; at least {limits.min_sharpness:g})")
    if abs(quality.yaw) > limits.max_yaw:
        shown = _shown(abs(quality.yaw), limits.max_yaw)
        problems.append(f"face turned too far sideways (yaw {shown}°; at most {limits.max_yaw:g}°)")
    if abs(quality.pitch) > limits.max_pitch:
        way = "down" if quality.pitch > 0 else "up"
        shown = _shown(abs(quality.pitch), limits.max_pitch)
        problems.append(f"face tilted too far {way} (pitch {shown}°; at most {limits.max_pitch:g}°)")
    return problems


def quality_problem(quality: FaceQuality, limits: QualityLimits) -> str | None:
    """Why a face should not be enrolled: the first of `quality_problems`, or None when it passes every check."""
    problems = quality_problems(quality, limits)
    return problems[0] if problems else None

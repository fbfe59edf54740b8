"""Is a detected face good enough to enroll? Size, sharpness and pose, as numbers.

Pure functions of one face: its five landmarks (in image pixels) and its aligned crop (what
the recognizer embeds). Thresholds live in `Settings` (ENROLL_*); their defaults come from
`benchmarks/enroll_quality.py` on the LFW dev-test photos (README, Identification).

* size: the side, in image pixels, of the square the aligned crop was cut from (the alignment
  scale, from all five landmarks, so a turned head does not shrink it the way the distance
  between the eyes does). A 40 px face is magnified almost three times into a 112 px crop.
* sharpness: variance of the Laplacian of the grey aligned crop. The crop has a fixed size,
  so blur from focus, motion or magnification all lower it alike.
* yaw: how far the nose sits off the eyes' midpoint, in eye distances, after alignment
  (0 frontal, about ±0.5 when the nose reaches one eye: a profile).
* pitch: where the nose sits between the eye line and the mouth line, minus the template's
  place (0 level; positive looking down, negative looking up).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vision.alignment import ARCFACE_SIZE, ARCFACE_TEMPLATE, similarity_transform

LEFT_EYE, RIGHT_EYE, NOSE, LEFT_MOUTH, RIGHT_MOUTH = range(5)


def _yaw_pitch(points: np.ndarray) -> tuple[float, float]:
    """(yaw, pitch) of five (x, y) points in one frame, unshifted."""
    eyes = (points[LEFT_EYE] + points[RIGHT_EYE]) / 2
    mouth = (points[LEFT_MOUTH] + points[RIGHT_MOUTH]) / 2
    eye_distance = max(float(np.linalg.norm(points[RIGHT_EYE] - points[LEFT_EYE])), 1e-6)
    yaw = float(points[NOSE][0] - eyes[0]) / eye_distance
    pitch = float(points[NOSE][1] - eyes[1]) / max(float(mouth[1] - eyes[1]), 1e-6)
    return yaw, pitch


TEMPLATE_YAW, TEMPLATE_PITCH = _yaw_pitch(ARCFACE_TEMPLATE.astype(np.float64))


@dataclass(frozen=True)
class FaceQuality:
    size: float  # pixels
    sharpness: float  # Laplacian variance of the 112x112 grey crop
    yaw: float  # eye distances, signed
    pitch: float  # fraction of the eye-to-mouth height, signed

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in vars(self).items()}


def face_size(landmarks: np.ndarray) -> float:
    """Side in image pixels of the square the aligned crop of a face (5, 2 landmarks) covers."""
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # template pixels per image pixel
    return ARCFACE_SIZE / max(scale, 1e-9)


def face_quality(landmarks: np.ndarray, crop: np.ndarray) -> FaceQuality:
    """landmarks (5, 2) in image pixels; crop (S, S, 3) uint8 aligned RGB -> FaceQuality."""
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE)
    aligned = landmarks @ matrix[:, :2].T + matrix[:, 2]
    yaw, pitch = _yaw_pitch(aligned)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] != ARCFACE_SIZE:
        grey = cv2.resize(grey, (ARCFACE_SIZE, ARCFACE_SIZE), interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return FaceQuality(face_size(landmarks), sharpness, yaw - TEMPLATE_YAW, pitch - TEMPLATE_PITCH)


@dataclass(frozen=True)
class QualityLimits:
    min_size: float
    min_sharpness: float
    max_yaw: float
    max_pitch: float


def quality_problem(quality: FaceQuality, limits: QualityLimits) -> str | None:
    """Why a face should not be enrolled, or None when it passes every check."""
    if quality.size < limits.min_size:
        return f"face too small ({quality.size:.0f} px; at least {limits.min_size:g} px)"
    if quality.sharpness < limits.min_sharpness:
        return f"face too blurred (sharpness {quality.sharpness:.0f}; at least {limits.min_sharpness:g})"
    if abs(quality.yaw) > limits.max_yaw:
        return f"face turned too far sideways (yaw {quality.yaw:+.2f}; at most ±{limits.max_yaw:g})"
    if abs(quality.pitch) > limits.max_pitch:
        return f"face tilted too far up or down (pitch {quality.pitch:+.2f}; at most ±{limits.max_pitch:g})"
    return None

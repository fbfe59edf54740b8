"""What every face answer carries besides its box: head pose and whether it would pass the enrollment gate.

Pure functions of a face's five landmarks and its aligned crop (the crop the recognizer embeds),
measured by `vision.quality` exactly as enrollment measures its main face, and judged by the
same checks (`quality_problems`, limits from ENROLL_* via `QualityLimits.from_settings`): a face
whose `reasons` are empty passes them; when not, enrollment refuses that face with `reasons[0]`.

The checks here are the ones about the face itself (size, sharpness, yaw, pitch). Enrollment
also refuses a *photo* in which no face is clearly the subject (a group photo), with
ENROLL_SINGLE_FACE_ONLY one with a second face of enrollable size, and with ENROLL_REQUIRE_LIVE
a face the anti-spoofing model calls a spoof; those depend on the other faces or on another
model, so no face's `reasons` name them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vision.alignment import align_faces
from vision.quality import FaceQuality, QualityLimits, face_quality, quality_problems


@dataclass(frozen=True)
class FaceAttributes:
    """One face measured: size, sharpness and pose (`quality`), and every enrollment check it fails."""

    quality: FaceQuality
    reasons: tuple[str, ...]  # in the gate's order (size, sharpness, yaw, pitch); () when enrollable

    @property
    def enrollable(self) -> bool:
        return not self.reasons


def face_attributes(landmarks: np.ndarray, crops: np.ndarray, limits: QualityLimits) -> list[FaceAttributes]:
    """landmarks (N, 5, 2) image pixels; crops (N, S, S, 3) uint8 RGB, each face aligned -> N attributes."""
    measured = []
    for points, crop in zip(landmarks, crops, strict=True):
        quality = face_quality(points, crop)
        measured.append(FaceAttributes(quality, tuple(quality_problems(quality, limits))))
    return measured


def image_face_attributes(
    image: np.ndarray, landmarks: np.ndarray, crop_size: int, limits: QualityLimits
) -> list[FaceAttributes]:
    """image (H, W, 3) uint8 RGB; landmarks (N, 5, 2) -> N attributes, each face aligned to (crop_size, crop_size)
    first: for faces whose crops were not made already (the recognizer's crop size, as enrollment aligns)."""
    return face_attributes(landmarks, align_faces(image, landmarks, crop_size), limits)

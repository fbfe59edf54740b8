"""Faces found in one image (`Detections`) and the choices made among them.

Pure numpy: which face is a photo's subject (`primary_face`, the one `/embedding` uses),
whether one face clearly is (`has_clear_subject`, for enrollment), and merging the faces of
several detector passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vision.boxes import box_iou

NUM_LANDMARKS = 5
CENTRE_WEIGHT = 2.0  # primary-face choice: squared centre offset counts twice against area
SUBJECT_MARGIN = 0.5  # enrollment: the runner-up may score at most half the main face


@dataclass(frozen=True)
class Detections:
    """Faces of one image in original pixel coordinates, best score first.

    boxes: (N, 4) float32 x1, y1, x2, y2; scores: (N,) float32; landmarks: (N, 5, 2) float32.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, NUM_LANDMARKS, 2), np.float32)
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def first(self, count: int) -> Detections:
        return Detections(self.boxes[:count], self.scores[:count], self.landmarks[:count])

    def take(self, index: np.ndarray | Sequence[int]) -> Detections:
        index = np.asarray(index, dtype=np.int64)
        return Detections(self.boxes[index], self.scores[index], self.landmarks[index])


def primary_scores(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(N,) how much each face looks like the photo's subject: area - 2 * squared centre offset."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    offset = centres - np.array([image_hw[1] / 2, image_hw[0] / 2])
    return areas - CENTRE_WEIGHT * (offset**2).sum(axis=1)


def primary_face(boxes: np.ndarray, image_hw: tuple[int, int]) -> int:
    """Index of the largest face nearest the image centre (highest `primary_scores`).

    boxes: (N, 4) with N >= 1. Ties go to the earlier (higher-scoring) face.
    """
    return int(np.argmax(primary_scores(boxes, image_hw)))


def has_clear_subject(boxes: np.ndarray, image_hw: tuple[int, int], margin: float = SUBJECT_MARGIN) -> bool:
    """True when one face clearly is the photo's subject (for enrollment).

    One face, or a main face with a positive `primary_scores` value at least 1/margin times
    every other face's: a portrait with bystanders passes, a group photo does not.
    """
    if boxes.shape[0] <= 1:
        return boxes.shape[0] == 1
    scores = np.sort(primary_scores(boxes, image_hw))[::-1]
    return bool(scores[0] > 0 and scores[1] <= margin * scores[0])


def clip_boxes(boxes: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes clipped to the image; landmarks are left alone (a cut-off face still aligns)."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, image_hw[1])
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, image_hw[0])
    return clipped


def concat_detections(parts: Sequence[Detections]) -> Detections:
    """Stack several `Detections` (e.g. of several passes over one image) into one."""
    if not parts:
        return Detections.empty()
    return Detections(
        np.concatenate([d.boxes for d in parts]),
        np.concatenate([d.scores for d in parts]),
        np.concatenate([d.landmarks for d in parts]),
    )


def add_missing_faces(base: Detections, extra: Detections, iou_threshold: float) -> Detections:
    """`base` plus the faces of `extra` that overlap no base face by more than `iou_threshold`.

    Base faces keep their boxes and landmarks; the result is sorted by score, best first.
    """
    if len(base) and len(extra):
        overlaps = np.stack([box_iou(box, base.boxes).max() for box in extra.boxes])
        extra = extra.take(np.nonzero(overlaps <= iou_threshold)[0])
    merged = concat_detections([base, extra])
    return merged.take(np.argsort(-merged.scores, kind="stable"))

"""SCRFD detector math (after InsightFace's SCRFD, written anew): canvases in, faces out.

Letterbox onto a square canvas (aspect ratio kept, image at the top-left) and decode SCRFD's
per-stride distance outputs around anchor centres. NMS (`vision.boxes`) and the mapping back
by the letterbox scale happen in `pipeline.FacePipeline`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from vision.detections import NUM_LANDMARKS, Detections

CANVAS_MULTIPLE = 32  # SCRFD's largest stride: canvas sides must be multiples of it
_OUTPUT_NAME = re.compile(r"^(score|bbox|kps)_(\d+)$")


def letterbox(image: np.ndarray, size: int, out: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Fit `image` (H, W, 3) into a (size, size, 3) black canvas at the top-left, aspect kept.

    `out`: an all-zero (size, size, 3) uint8 canvas to draw on (e.g. one row of a batch),
    which saves a copy per image; a new one otherwise.
    Returns the canvas and the scale s such that canvas coordinates = s * image coordinates.
    """
    height, width = image.shape[:2]
    if height / width > 1.0:
        new_h, new_w = size, max(1, int(size * width / height))
    else:
        new_w, new_h = size, max(1, int(size * height / width))
    scale = new_h / height
    canvas = np.zeros((size, size, 3), dtype=np.uint8) if out is None else out
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale


def fitted_canvas(image_hw: tuple[int, int], fit_sizes: Sequence[int], main_size: int) -> int:
    """The smallest of `fit_sizes` (ascending) that holds an (H, W) image unshrunk, else `main_size`."""
    longest = max(image_hw)
    return next((size for size in fit_sizes if longest <= size), main_size)


def to_nchw(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 normalised as (x - mean) / std."""
    batch = images.astype(np.float32)
    batch -= mean
    batch *= 1.0 / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def scrfd_strides(output_names: Sequence[str]) -> list[int]:
    """Strides named by SCRFD outputs (`score_8`, `bbox_8`, `kps_8`, ...), ascending."""
    found: dict[int, set[str]] = {}
    for name in output_names:
        match = _OUTPUT_NAME.match(name)
        if match:
            found.setdefault(int(match.group(2)), set()).add(match.group(1))
    strides = sorted(s for s, kinds in found.items() if kinds == {"score", "bbox", "kps"})
    if not strides:
        raise ValueError(f"no SCRFD score/bbox/kps outputs among {list(output_names)}")
    return strides


def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """(height*width*anchors, 2) float32 x, y centres in canvas pixels, row-major, anchors innermost."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centers, anchors, axis=0)


def decode_scrfd(
    outputs: Mapping[str, np.ndarray], canvas_hw: tuple[int, int], threshold: float
) -> Detections:
    """Decode one image's SCRFD outputs (per stride: score (A, 1), bbox (A, 4), kps (A, 10)).

    Distances are in stride units from each anchor centre. Returns canvas-pixel detections
    with score >= threshold, unsorted and before NMS.
    """
    boxes, scores, landmarks = [], [], []
    for stride in scrfd_strides(list(outputs)):
        score = outputs[f"score_{stride}"].reshape(-1)
        cells = (canvas_hw[0] // stride) * (canvas_hw[1] // stride)
        anchors = max(1, score.shape[0] // max(cells, 1))
        keep = np.nonzero(score >= threshold)[0]
        if keep.size == 0:
            continue
        centers = anchor_centers(canvas_hw[0] // stride, canvas_hw[1] // stride, stride, anchors)[keep]
        dist = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep] * stride
        boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1))
        kps = outputs[f"kps_{stride}"].reshape(-1, NUM_LANDMARKS, 2)[keep] * stride
        landmarks.append(kps + centers[:, None, :])
        scores.append(score[keep])
    if not scores:
        return Detections.empty()
    return Detections(
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(landmarks).astype(np.float32),
    )

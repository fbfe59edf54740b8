"""Face crops and score fusion for the MiniFASNet anti-spoofing models (numpy and OpenCV only).

The models were trained on crops made by the authors' `CropImage`, so the crop arithmetic here
is theirs to the last rounding: from the face box (x, y, w, h) a window of w*s by h*s around the
box centre, s = min(scale, (H-1)/h, (W-1)/w), pushed back inside the image where it crosses an
edge, corners truncated to int, the inclusive pixel range [left, right] x [top, bottom] resized
to 80x80 with `cv2.resize` (bilinear). Each model has its own scale (2.7 and 4.0).

Colour order: the models expect **BGR** (the authors read images with `cv2.imread`). The service
decodes uploads to RGB, so the caller flips (`image[..., ::-1]`) before `liveness_crops`, or
flips the 80x80 crops (the same pixels: cropping and resizing act on each channel alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CROP_SIZE = (80, 80)  # (height, width) of the models' input
REAL_CLASS = 1  # softmax index of "real"; 0 and 2 are attack types


def liveness_box(bbox_xyxy: Sequence[float]) -> tuple[int, int, int, int]:
    """Detector box (x1, y1, x2, y2) -> the authors' integer (x, y, w, h).

    Their detector wrapper returns [int(left), int(top), int(right - left + 1), int(bottom - top + 1)];
    the "+ 1" treats x2, y2 as inclusive pixel coordinates. Kept as is: the crops depend on it.
    """
    x1, y1, x2, y2 = (float(value) for value in bbox_xyxy[:4])
    return int(x1), int(y1), int(x2 - x1 + 1), int(y2 - y1 + 1)


def crop_window(box_xywh: Sequence[float], image_hw: tuple[int, int], scale: float) -> tuple[int, int, int, int]:
    """The authors' crop window (left, top, right, bottom), inclusive pixel coordinates inside the image.

    Written in their order of floating-point operations so every window, and every int()
    truncation of it, is theirs. Raises ValueError for an empty box or image.
    """
    x, y, box_w, box_h = (float(value) for value in box_xywh)
    src_h, src_w = int(image_hw[0]), int(image_hw[1])
    if not (box_w > 0 and box_h > 0):
        raise ValueError(f"face box {tuple(box_xywh)} has no area")
    if src_h < 1 or src_w < 1:
        raise ValueError(f"image of {src_h}x{src_w} pixels")
    # Never wider or taller than the image minus one pixel: the window then always fits after the shifts.
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, float(scale)))
    new_w, new_h = box_w * scale, box_h * scale
    centre_x, centre_y = box_w / 2 + x, box_h / 2 + y
    left, top = centre_x - new_w / 2, centre_y - new_h / 2
    right, bottom = centre_x + new_w / 2, centre_y + new_h / 2
    # Shift (not clip) at the edges: the window keeps its size, so the face is off-centre instead of smaller.
    if left < 0:
        right -= left
        left = 0
    if top < 0:
        bottom -= top
        top = 0
    if right > src_w - 1:
        left -= right - src_w + 1
        right = src_w - 1
    if bottom > src_h - 1:
        top -= bottom - src_h + 1
        bottom = src_h - 1
    # int() truncates toward zero, like theirs (a window 1e-13 left of 0 becomes 0, not -1).
    return int(left), int(top), int(right), int(bottom)


def crop_face(
    image_bgr: np.ndarray, box_xywh: Sequence[float], scale: float, size: tuple[int, int] = CROP_SIZE
) -> np.ndarray:
    """One model input: image (H, W, 3) -> (size[0], size[1], 3), same dtype, bilinear."""
    left, top, right, bottom = crop_window(box_xywh, image_bgr.shape[:2], scale)
    window = image_bgr[top : bottom + 1, left : right + 1]
    if any(stride < 0 for stride in window.strides):  # e.g. an RGB->BGR view: OpenCV needs positive steps
        window = np.ascontiguousarray(window)
    return cv2.resize(window, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def liveness_crops(
    image_bgr: np.ndarray,
    boxes_xyxy: np.ndarray,
    scales: Sequence[float],
    size: tuple[int, int] = CROP_SIZE,
) -> np.ndarray:
    """Crops of every face of one image at every scale.

    image_bgr: (H, W, 3) uint8, BGR. boxes_xyxy: (N, 4+) detector boxes x1, y1, x2, y2 (extra
    columns such as a score are ignored). scales: one per model, e.g. (2.7, 4.0).
    Returns (len(scales), N, size[0], size[1], 3) uint8: NHWC per model, ready for a uint8
    served graph (or `.transpose(0, 1, 4, 2, 3)` and float32 for the PyTorch models).
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image_bgr.shape}")
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else np.atleast_2d(boxes)
    out = np.empty((len(scales), len(boxes), size[0], size[1], 3), dtype=image_bgr.dtype)
    for face, bbox in enumerate(boxes):
        box = liveness_box(bbox)
        for index, scale in enumerate(scales):
            out[index, face] = crop_face(image_bgr, box, scale, size)
    return out


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (for graphs that return logits)."""
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def real_scores(probabilities_per_model: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(M, N, 3) softmax probabilities (or M arrays of (N, 3)) -> (N,) mean over models of P(real).

    The authors sum the models' softmax vectors and report sum[1] / 2 for their two models: the
    mean. (A served graph holding both models returns (N, M, 3): pass `.transpose(1, 0, 2)`.)
    """
    stacked = np.asarray(probabilities_per_model, dtype=np.float64)
    if stacked.ndim != 3 or stacked.shape[-1] <= REAL_CLASS:
        raise ValueError(f"expected (models, faces, classes) probabilities, got shape {stacked.shape}")
    return stacked[..., REAL_CLASS].mean(axis=0).astype(np.float32)


def fused_labels(probabilities_per_model: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """(M, N, 3) -> (N,) the authors' label: argmax of the summed softmax vectors (1 = real)."""
    return np.asarray(probabilities_per_model, dtype=np.float64).sum(axis=0).argmax(axis=-1)

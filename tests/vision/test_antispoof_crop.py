"""vision/antispoof.py: the authors' crop window at every edge, the batch crops, and score fusion.

The reference here is a straightforward transcription of the arithmetic as the model README
states it (s = min(scale, (H-1)/h, (W-1)/w), a w*s by h*s window on the box centre, shifted back
inside the image, corners truncated), written independently of the module, plus windows
worked out by hand for the simple cases.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import ROOT  # noqa: F401  (puts the project on sys.path)
from vision.antispoof import (
    CROP_SIZE,
    crop_face,
    crop_window,
    fused_labels,
    liveness_box,
    liveness_crops,
    real_scores,
    softmax,
)


def readme_window(box: tuple[float, float, float, float], hw: tuple[int, int], scale: float) -> tuple[int, ...]:
    """The README's crop arithmetic, transcribed as plainly as possible."""
    x, y, w, h = box
    height, width = hw
    s = min(scale, (height - 1) / h, (width - 1) / w)
    cx, cy = x + w / 2, y + h / 2
    x1, x2 = cx - w * s / 2, cx + w * s / 2
    y1, y2 = cy - h * s / 2, cy + h * s / 2
    # Shift the whole window back inside [0, W-1] x [0, H-1]: left/top edge first, then right/bottom.
    if x1 < 0:
        x1, x2 = 0, x2 - x1
    if y1 < 0:
        y1, y2 = 0, y2 - y1
    if x2 > width - 1:
        x1, x2 = x1 - (x2 - (width - 1)), width - 1
    if y2 > height - 1:
        y1, y2 = y1 - (y2 - (height - 1)), height - 1
    return int(x1), int(y1), int(x2), int(y2)


def readme_crop(image: np.ndarray, box, scale: float) -> np.ndarray:
    x1, y1, x2, y2 = readme_window(box, image.shape[:2], scale)
    return cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (80, 80))


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise: every pixel distinct enough that an off-by-one window shows."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    base = np.stack([xs * 255 / max(width, 1), ys * 255 / max(height, 1), (xs + ys) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


# (image H, W), box (x, y, w, h), scale, hand-computed window (left, top, right, bottom) or None
CASES = {
    "centre": ((480, 640), (100, 100, 100, 100), 2.7, (15, 15, 285, 285)),
    "left edge": ((480, 640), (0, 200, 100, 100), 2.7, (0, 115, 270, 385)),
    "right edge": ((480, 640), (600, 200, 40, 40), 4.0, (479, 140, 639, 300)),
    "top edge": ((480, 640), (300, 0, 60, 80), 2.7, (249, 0, 411, 216)),
    "bottom edge": ((480, 640), (300, 440, 60, 40), 4.0, (210, 319, 450, 479)),
    "top-left corner, box partly outside": ((480, 640), (-20, -30, 100, 120), 2.7, (0, 0, 270, 324)),
    "box entirely right of the image": ((480, 640), (700, 100, 50, 50), 2.7, (504, 57, 639, 192)),
    "box larger than the image": ((480, 640), (-50, -50, 800, 600), 2.7, (0, 0, 639, 479)),
    "scale clamped by the height": ((300, 1000), (400, 50, 100, 200), 4.0, (375, 0, 524, 299)),
    "fractional window": ((480, 640), (101, 57, 77, 93), 2.7, None),
    "fractional window, scale 4": ((480, 640), (333, 211, 61, 79), 4.0, None),
    "portrait photo": ((640, 480), (192, 105, 194, 250), 4.0, None),
    "tiny image 2x3": ((2, 3), (0, 0, 2, 2), 2.7, (0, 0, 1, 1)),
    "one-pixel image": ((1, 1), (0, 0, 1, 1), 4.0, (0, 0, 0, 0)),
    "face bigger than a tiny image": ((5, 7), (-3, -3, 20, 20), 2.7, None),
}


@pytest.mark.parametrize(("hw", "box", "scale", "expected"), CASES.values(), ids=CASES.keys())
def test_crop_window_follows_the_readme_arithmetic(hw, box, scale, expected) -> None:
    window = crop_window(box, hw, scale)
    assert window == readme_window(box, hw, scale)
    if expected is not None:
        assert window == expected
    left, top, right, bottom = window
    assert 0 <= left <= right <= hw[1] - 1 and 0 <= top <= bottom <= hw[0] - 1


@pytest.mark.parametrize(("hw", "box", "scale", "expected"), CASES.values(), ids=CASES.keys())
def test_crops_are_pixel_identical_to_the_transcription(hw, box, scale, expected) -> None:
    image = photo_like(*hw)
    crop = crop_face(image, box, scale)
    assert crop.shape == (80, 80, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, readme_crop(image, box, scale))


def test_the_window_keeps_its_size_when_shifted() -> None:
    # Shifted, not clipped: a face at the left edge gets the same 270 px window as one in the middle.
    centre = crop_window((300, 200, 100, 100), (480, 640), 2.7)
    edge = crop_window((0, 200, 100, 100), (480, 640), 2.7)
    assert centre[2] - centre[0] == edge[2] - edge[0] == 270


@pytest.mark.parametrize(
    ("xyxy", "expected"),
    [
        ((10.7, 20.2, 50.9, 80.1), (10, 20, 41, 60)),
        ((192.08517456054688, 105.22239685058594, 385.3489990234375, 354.49615478515625), (192, 105, 194, 250)),
        ((-3.5, -0.5, 20.0, 30.0), (-3, 0, 24, 31)),  # int() truncates toward zero, like the authors'
        ((5, 5, 5, 5), (5, 5, 1, 1)),  # the "+ 1": inclusive corners
    ],
)
def test_liveness_box_is_the_authors_integer_box(xyxy, expected) -> None:
    assert liveness_box(xyxy) == expected


def test_empty_boxes_and_images_are_refused() -> None:
    with pytest.raises(ValueError, match="no area"):
        crop_window((10, 10, 0, 5), (100, 100), 2.7)
    with pytest.raises(ValueError, match="no area"):
        crop_window((10, 10, 5, -1), (100, 100), 2.7)
    with pytest.raises(ValueError, match="image"):
        crop_window((0, 0, 5, 5), (0, 100), 2.7)


def test_liveness_crops_stacks_every_face_at_every_scale() -> None:
    image = photo_like(480, 640, seed=1)
    boxes = np.array([[100.4, 100.9, 199.2, 230.7, 0.9], [0, 300, 90, 470, 0.8], [600, 10, 660, 80, 0.7]])
    crops = liveness_crops(image, boxes, (2.7, 4.0))
    assert crops.shape == (2, 3, *CROP_SIZE, 3) and crops.dtype == np.uint8
    for s, scale in enumerate((2.7, 4.0)):
        for n, bbox in enumerate(boxes):
            np.testing.assert_array_equal(crops[s, n], readme_crop(image, liveness_box(bbox), scale))
    assert liveness_crops(image, np.zeros((0, 4)), (2.7, 4.0)).shape == (2, 0, 80, 80, 3)


def test_cropping_the_rgb_image_is_the_bgr_crop_flipped() -> None:
    # What the module docstring promises the caller: flip the image or flip the crops, same pixels.
    rgb = photo_like(300, 400, seed=2)
    boxes = np.array([[50, 60, 150, 200], [300, 0, 399, 120]])
    from_bgr_view = liveness_crops(rgb[..., ::-1], boxes, (2.7,))  # a negative-stride view works too
    from_rgb = liveness_crops(rgb, boxes, (2.7,))
    np.testing.assert_array_equal(from_bgr_view, from_rgb[..., ::-1])


def test_real_score_is_the_mean_probability_of_class_1() -> None:
    v2 = np.array([[0.06, 0.01, 0.93], [0.0, 1.0, 0.0]])
    v1se = np.array([[0.05, 0.57, 0.38], [0.1, 0.8, 0.1]])
    np.testing.assert_allclose(real_scores([v2, v1se]), [0.29, 0.9], atol=1e-7)
    np.testing.assert_allclose(real_scores(np.stack([v2, v1se])), [0.29, 0.9], atol=1e-7)
    np.testing.assert_array_equal(fused_labels([v2, v1se]), [2, 1])
    assert real_scores(np.zeros((2, 0, 3))).shape == (0,)
    with pytest.raises(ValueError, match="models, faces, classes"):
        real_scores(np.zeros((2, 3)))


def test_softmax_is_stable_and_normalised() -> None:
    probabilities = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert probabilities[0, 0] == 1.0 and np.isfinite(probabilities).all()

"""Unit tests of the pure numpy/OpenCV functions in pipeline.py (no Triton)."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from errors import NoFaceDetected
from pipeline import FacePipeline
from settings import Settings
from vision.alignment import ARCFACE_TEMPLATE, align_faces, cosine_similarity, l2_normalize, similarity_transform
from vision.boxes import box_iou, nms
from vision.detections import (
    Detections,
    add_missing_faces,
    clip_boxes,
    concat_detections,
    has_clear_subject,
    primary_face,
)
from vision.scrfd import anchor_centers, decode_scrfd, letterbox, scrfd_strides, to_nchw


# --------------------------------------------------------------------------- letterbox
@pytest.mark.parametrize(
    ("height", "width", "size", "content_hw"),
    [
        (100, 200, 640, (320, 640)),  # wide: width fills the canvas
        (200, 100, 640, (640, 320)),  # tall: height fills the canvas
        (150, 150, 640, (640, 640)),  # square, upscaled
        (886, 1280, 640, (443, 640)),  # t1.jpg
        (1, 1000, 128, (1, 128)),  # degenerate strip keeps at least one row
    ],
)
def test_letterbox_keeps_aspect_ratio(height: int, width: int, size: int, content_hw: tuple[int, int]) -> None:
    image = np.full((height, width, 3), 200, np.uint8)
    canvas, scale = letterbox(image, size)
    assert canvas.shape == (size, size, 3)
    rows, cols = np.nonzero(canvas[:, :, 0])
    assert (rows.max() + 1, cols.max() + 1) == content_hw
    assert canvas[content_hw[0] :, :].sum() == 0 and canvas[:, content_hw[1] :].sum() == 0
    assert scale == pytest.approx(content_hw[0] / height, rel=1e-6)


def test_letterbox_round_trip_maps_points_back_to_original_pixels() -> None:
    image = np.zeros((300, 500, 3), np.uint8)
    cv2.circle(image, (410, 70), 6, (255, 255, 255), -1)
    canvas, scale = letterbox(image, 640)
    ys, xs = np.nonzero(canvas[:, :, 0] > 128)
    back = np.array([xs.mean(), ys.mean()]) / scale
    np.testing.assert_allclose(back, [410, 70], atol=1.0)


def test_to_nchw_normalises_and_transposes() -> None:
    images = np.zeros((2, 4, 6, 3), np.uint8)
    images[..., 0] = 255
    batch = to_nchw(images, 127.5, 128.0)
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch[0, 0, 0, 0] == pytest.approx((255 - 127.5) / 128)
    assert batch[0, 1, 0, 0] == pytest.approx(-127.5 / 128)


# --------------------------------------------------------------------------- SCRFD decode
def test_scrfd_strides_reads_output_names() -> None:
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (32, 8, 16)]
    assert scrfd_strides(names) == [8, 16, 32]


def test_scrfd_strides_rejects_a_recognizer() -> None:
    with pytest.raises(ValueError, match="no SCRFD"):
        scrfd_strides(["516"])


def test_anchor_centers_are_row_major_with_anchors_innermost() -> None:
    centers = anchor_centers(2, 3, 8, 2)
    assert centers.shape == (12, 2)
    np.testing.assert_array_equal(centers[:4], [[0, 0], [0, 0], [8, 0], [8, 0]])
    np.testing.assert_array_equal(centers[6], [0, 8])


def _empty_outputs(size: int, anchors: int = 2, strides=(8, 16, 32)) -> dict[str, np.ndarray]:
    outputs = {}
    for s in strides:
        n = (size // s) ** 2 * anchors
        outputs[f"score_{s}"] = np.zeros((n, 1), np.float32)
        outputs[f"bbox_{s}"] = np.zeros((n, 4), np.float32)
        outputs[f"kps_{s}"] = np.zeros((n, 10), np.float32)
    return outputs


def test_decode_scrfd_returns_empty_detections_when_nothing_scores() -> None:
    found = decode_scrfd(_empty_outputs(64), (64, 64), 0.5)
    assert len(found) == 0 and found.boxes.shape == (0, 4) and found.landmarks.shape == (0, 5, 2)


def test_decode_scrfd_decodes_distances_around_the_anchor_centre() -> None:
    outputs = _empty_outputs(64)
    # stride 16, cell (row 1, col 2), second anchor: index ((1 * 4) + 2) * 2 + 1 = 13, centre (32, 16)
    outputs["score_16"][13] = 0.9
    outputs["bbox_16"][13] = [1.0, 0.5, 2.0, 1.5]  # left, top, right, bottom in stride units
    outputs["kps_16"][13] = np.arange(10, dtype=np.float32) / 10
    found = decode_scrfd(outputs, (64, 64), 0.5)
    assert len(found) == 1
    np.testing.assert_allclose(found.boxes[0], [32 - 16, 16 - 8, 32 + 32, 16 + 24])
    np.testing.assert_allclose(found.landmarks[0, 1], [32 + 0.2 * 16, 16 + 0.3 * 16])
    assert found.scores[0] == pytest.approx(0.9)


def test_decode_scrfd_threshold_is_inclusive() -> None:
    outputs = _empty_outputs(64)
    outputs["score_32"][0] = 0.5
    assert len(decode_scrfd(outputs, (64, 64), 0.5)) == 1
    assert len(decode_scrfd(outputs, (64, 64), 0.51)) == 0


# --------------------------------------------------------------------------- NMS
@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "expected"),
    [
        ([], [], 0.4, []),
        ([[0, 0, 10, 10]], [0.9], 0.4, [0]),
        ([[0, 0, 10, 10], [1, 1, 11, 11]], [0.8, 0.9], 0.4, [1]),  # overlap: best survives
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.8, 0.9], 0.4, [1, 0]),  # disjoint: both, best first
        ([[0, 0, 10, 10], [0, 0, 10, 20]], [0.9, 0.8], 0.4, [0]),  # IoU 0.5 > 0.4
        ([[0, 0, 10, 10], [0, 0, 10, 20]], [0.9, 0.8], 0.6, [0, 1]),  # IoU 0.5 <= 0.6
        ([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5, 0.5], 0.4, [0]),  # ties: first wins
    ],
)
def test_nms_table(boxes, scores, threshold, expected) -> None:
    keep = nms(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32), threshold)
    assert keep.tolist() == expected


def test_box_iou_of_identical_and_disjoint_boxes() -> None:
    iou = box_iou(np.array([0, 0, 2, 2.0]), np.array([[0, 0, 2, 2.0], [5, 5, 6, 6.0], [1, 0, 3, 2.0]]))
    np.testing.assert_allclose(iou, [1.0, 0.0, 1 / 3])


# --------------------------------------------------------------------------- alignment
def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"),
    [(0, 1, 0, 0), (0, 2.5, 40, -10), (30, 0.7, 5, 90), (-90, 1.3, 200, 10), (179, 0.25, -3, 3)],
)
def test_similarity_transform_recovers_a_known_transform(angle, scale, tx, ty) -> None:
    truth = _similarity(angle, scale, tx, ty)
    src = np.array([[10, 20], [80, 25], [40, 60], [20, 95], [75, 90]], np.float64)
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_transform(src, dst), truth, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_TEMPLATE.astype(np.float64)
    mirrored = src * [-1, 1]
    matrix = similarity_transform(src, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_align_faces_puts_rotated_landmarks_on_the_template() -> None:
    # Draw five dots where a rotated, scaled face would have its landmarks; alignment must
    # bring each dot onto its template position.
    truth = _similarity(25, 2.0, 150, 60)
    landmarks = ARCFACE_TEMPLATE @ truth[:, :2].T + truth[:, 2]
    image = np.zeros((400, 400, 3), np.uint8)
    for i, (x, y) in enumerate(landmarks):
        cv2.circle(image, (round(x), round(y)), 5, (50 * (i + 1), 0, 0), -1)
    crop = align_faces(image, landmarks[None].astype(np.float32))[0]
    assert crop.shape == (112, 112, 3)
    for i, (x, y) in enumerate(ARCFACE_TEMPLATE):
        assert crop[round(y), round(x), 0] == pytest.approx(50 * (i + 1), abs=2)


def test_align_faces_of_no_faces_is_an_empty_batch() -> None:
    assert align_faces(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 5, 2), np.float32)).shape == (0, 112, 112, 3)


# --------------------------------------------------------------------------- embeddings and choice
def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [([1, 0], [1, 0], 1.0), ([1, 0], [0, 2], 0.0), ([1, 1], [-3, -3], -1.0), ([0, 0], [1, 0], 0.0)],
)
def test_cosine_similarity_is_raw_cosine(a, b, expected) -> None:
    assert cosine_similarity(np.array(a, float), np.array(b, float)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[40, 40, 60, 60]], 0),  # one face
        ([[0, 0, 20, 20], [40, 40, 80, 80]], 1),  # larger and central
        ([[0, 0, 50, 50], [45, 45, 75, 75]], 1),  # a bit smaller but centred beats the corner
        ([[40, 40, 60, 60], [40, 40, 60, 60]], 0),  # tie: the earlier (higher score) face
    ],
)
def test_primary_face_prefers_large_central_faces(boxes, expected) -> None:
    assert primary_face(np.asarray(boxes, np.float32), (120, 120)) == expected


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([], False),  # nobody
        ([[40, 40, 80, 80]], True),  # one face, wherever it is
        ([[35, 35, 85, 85], [0, 0, 30, 30]], True),  # a portrait with a bystander in the corner
        ([[10, 40, 50, 80], [70, 40, 110, 80]], False),  # two people side by side: no subject
        ([[30, 30, 90, 90], [35, 35, 85, 85]], False),  # two central faces of similar size
    ],
)
def test_has_clear_subject_table(boxes, expected) -> None:
    assert has_clear_subject(np.asarray(boxes, np.float32).reshape(-1, 4), (120, 120)) == expected


def test_clip_boxes_keeps_boxes_inside_the_image() -> None:
    clipped = clip_boxes(np.array([[-5, -2, 30, 300]], np.float32), (100, 50))
    np.testing.assert_array_equal(clipped, [[0, 0, 30, 100]])


def _faces(boxes, scores) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    landmarks = np.repeat(boxes[:, None, :2], 5, axis=1)  # marks where each face came from
    return Detections(boxes, np.asarray(scores, np.float32), landmarks)


@pytest.mark.parametrize(
    ("base", "extra", "expected_boxes"),
    [
        (([], []), ([], []), []),  # nothing anywhere
        (([], []), ([[0, 0, 10, 10]], [0.7]), [[0, 0, 10, 10]]),  # only the extra pass finds it
        (([[0, 0, 10, 10]], [0.6]), ([], []), [[0, 0, 10, 10]]),  # only the main pass
        (([[0, 0, 10, 10]], [0.6]), ([[1, 1, 11, 11]], [0.9]), [[0, 0, 10, 10]]),  # same face: main kept
        (([[0, 0, 10, 10]], [0.6]), ([[50, 50, 90, 90]], [0.9]), [[50, 50, 90, 90], [0, 0, 10, 10]]),  # new face
    ],
)
def test_add_missing_faces_table(base, extra, expected_boxes) -> None:
    merged = add_missing_faces(_faces(*base), _faces(*extra), 0.4)
    np.testing.assert_array_equal(merged.boxes.reshape(-1, 4), np.asarray(expected_boxes, np.float32).reshape(-1, 4))
    np.testing.assert_array_equal(merged.landmarks[:, 0], merged.boxes[:, :2])


def test_concat_detections_of_nothing_is_empty() -> None:
    assert len(concat_detections([])) == 0
    assert len(concat_detections([Detections.empty(), Detections.empty()])) == 0


# --------------------------------------------------------------------------- orchestration with a fake backend
class FakeBinding:
    def __init__(self, parameters=None, input_shape=(3, 112, 112)) -> None:
        self.parameters = parameters or {}
        self.input_shape = input_shape


class FakeBackend:
    """Stands in for Triton: a detector that 'finds' one face only on the listed canvas sizes."""

    def __init__(self, face_on_sizes: set[int]) -> None:
        self.face_on_sizes = face_on_sizes
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    async def binding(self, model: str) -> FakeBinding:
        return FakeBinding()

    async def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append((model, batch.shape))
        if model == "fr_model":
            return {"516": np.ones((batch.shape[0], 512), np.float32)}
        size = batch.shape[2]
        outputs = {k: np.repeat(v[None], batch.shape[0], axis=0) for k, v in _empty_outputs(size).items()}
        if size in self.face_on_sizes:
            outputs["score_32"][:, 0] = 0.9
            outputs["bbox_32"][:, 0] = [0, 0, 2, 2]
        return outputs


PHOTO = np.zeros((1000, 1000, 3), np.uint8)  # larger than every fitted canvas: the 640 one + the 128 pass


def test_pipeline_detects_all_images_in_one_detector_call_per_canvas() -> None:
    backend = FakeBackend({640})
    found = asyncio.run(FacePipeline(backend, Settings()).detect([PHOTO, PHOTO]))
    assert [len(f) for f in found] == [1, 1]
    assert sorted(shape for _, shape in backend.calls) == [(2, 3, 128, 128), (2, 3, 640, 640)]


def test_pipeline_adds_a_face_only_the_small_canvas_finds() -> None:
    backend = FakeBackend({128})
    found = asyncio.run(FacePipeline(backend, Settings()).detect([PHOTO]))
    assert len(found[0]) == 1


def test_pipeline_without_extra_canvases_makes_one_call() -> None:
    backend = FakeBackend({640})
    asyncio.run(FacePipeline(backend, Settings(detector_extra_sizes=[])).detect([PHOTO]))
    assert [shape for _, shape in backend.calls] == [(1, 3, 640, 640)]


@pytest.mark.parametrize(
    ("image_hw", "fit_sizes", "expected"),
    [
        ((150, 150), [128, 256, 384, 512], (256, ())),  # an LFW thumbnail: 256, not 640 (~6x less work)
        ((128, 100), [128, 256, 384, 512], (128, ())),  # exactly a canvas side: that canvas
        ((250, 250), [128, 256, 384, 512], (256, ())),  # no 128 pass: 256 is not more than twice 128
        ((200, 300), [128, 256, 384, 512], (384, (128,))),  # the long side decides
        ((1000, 1000), [128, 256, 384, 512], (640, (128,))),  # too large for every fitted canvas
        ((150, 150), [], (640, (128,))),  # fitting off: always the main canvas, as InsightFace does
    ],
)
def test_canvas_plan_fits_the_photo(image_hw: tuple[int, int], fit_sizes: list[int], expected) -> None:
    pipeline = FacePipeline(FakeBackend(set()), Settings(detector_fit_sizes=fit_sizes))
    assert pipeline.canvases(image_hw) == expected


def test_pipeline_sends_each_canvas_size_its_own_call() -> None:
    backend = FakeBackend({256, 640})
    thumbnail = np.zeros((150, 150, 3), np.uint8)
    found = asyncio.run(FacePipeline(backend, Settings()).detect([thumbnail, PHOTO, thumbnail]))
    assert [len(f) for f in found] == [1, 1, 1]
    assert sorted(shape for _, shape in backend.calls) == [(1, 3, 128, 128), (1, 3, 640, 640), (2, 3, 256, 256)]


def test_pipeline_names_the_image_without_a_face() -> None:
    backend = FakeBackend(set())
    images = [np.zeros((64, 64, 3), np.uint8)] * 2
    with pytest.raises(NoFaceDetected, match="in image_a"):
        asyncio.run(FacePipeline(backend, Settings()).primary_embeddings(images, labels=("image_a", "image_b")))


def test_pipeline_rejects_a_canvas_that_is_not_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        FacePipeline(FakeBackend(set()), Settings(detector_input_size=500))

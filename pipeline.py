"""Face detection, alignment and embedding: numpy/OpenCV math plus its orchestration.

The math is pure functions on arrays (shapes in the docstrings); `FacePipeline`
strings them together around two model calls made through an injected
`InferenceBackend` (in production `triton_service.TritonClient`). CPU-heavy steps
run in worker threads so the event loop keeps feeding Triton's dynamic batcher.

Algorithm (after InsightFace's SCRFD and `norm_crop`, written anew):
letterbox onto a square canvas (aspect ratio kept, image at the top-left),
decode SCRFD's per-stride distance outputs around anchor centres, greedy NMS,
map back by the letterbox scale; a complementary pass on a small canvas adds the
faces the main 640 canvas misses (SCRFD-500M misses some large, close-up faces)
without touching the faces it found; align the five landmarks to
the ArcFace 112x112 template with a least-squares similarity (Umeyama), embed,
L2-normalise, compare by cosine.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from errors import NoFaceDetected
from metrics import FACES_DETECTED
from settings import Settings
from triton_service import DETECTOR, RECOGNIZER

# Where the five landmarks (eyes, nose tip, mouth corners) sit in a 112x112 ArcFace crop.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIZE = 112
CANVAS_MULTIPLE = 32  # SCRFD's largest stride: canvas sides must be multiples of it
NUM_LANDMARKS = 5
# Defaults when the served model config carries no normalisation parameters.
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5
CENTRE_WEIGHT = 2.0  # primary-face choice: squared centre offset counts twice against area
SUBJECT_MARGIN = 0.5  # enrollment: the runner-up may score at most half the main face
_OUTPUT_NAME = re.compile(r"^(score|bbox|kps)_(\d+)$")

cv2.setNumThreads(1)  # the API's threads plus Triton share two cores; no nested pools


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


class InferenceBackend(Protocol):
    async def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    async def binding(self, model: str): ...  # -> object with `.parameters` and `.input_shape`


# --------------------------------------------------------------------------- pure math
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


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (M, 4) boxes -> (M,)."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression. boxes (N, 4), scores (N,) -> kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama (1991). src, dst: (K, 2) -> (2, 3) float64 matrix M with dst ~ M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1  # a reflection is not a similarity: flip the weakest axis
    rotation = u @ sign @ vt
    variance = (src_c**2).sum() / src.shape[0]
    scale = (singular * np.diag(sign)).sum() / variance if variance > 0 else 1.0
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_faces(image: np.ndarray, landmarks: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """Warp each face onto the ArcFace template. image (H, W, 3), landmarks (N, 5, 2) -> (N, size, size, 3)."""
    template = ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
    crops = np.empty((landmarks.shape[0], size, size, 3), dtype=np.uint8)
    for i, points in enumerate(landmarks):
        matrix = similarity_transform(points, template)
        crops[i] = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    return crops


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> rows of unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Raw cosine in [-1, 1] of two (D,) vectors."""
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


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


# --------------------------------------------------------------------------- orchestration
def _norm(parameters: Mapping[str, str], default_mean: float, default_std: float) -> tuple[float, float]:
    return float(parameters.get("norm_mean", default_mean)), float(parameters.get("norm_std", default_std))


def model_input(images: np.ndarray, binding, default_mean: float, default_std: float) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> what the served model takes.

    Installed models take the pixels as they are (uint8 NHWC: normalisation folded into the
    graph, a quarter of the bytes); a raw float model gets (x - mean) / std as NCHW.
    """
    if getattr(binding, "input_dtype", "TYPE_FP32") == "TYPE_UINT8":
        return np.ascontiguousarray(images)
    mean, std = _norm(binding.parameters, default_mean, default_std)
    return to_nchw(images, mean, std)


class FacePipeline:
    """Detect, align and embed faces with every inference on the backend (Triton)."""

    def __init__(self, backend: InferenceBackend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.main_size = settings.detector_input_size
        self.extra_sizes = tuple(dict.fromkeys(s for s in settings.detector_extra_sizes if s != self.main_size))
        self.fit_sizes = tuple(sorted({s for s in settings.detector_fit_sizes if s < self.main_size}))
        for size in settings.detector_canvases:  # every canvas Triton is warmed up at and sent
            if size <= 0 or size % CANVAS_MULTIPLE:
                raise ValueError(f"detector canvas {size} is not a positive multiple of {CANVAS_MULTIPLE}")

    def canvases(self, image_hw: tuple[int, int]) -> tuple[int, tuple[int, ...]]:
        """(main canvas, complementary canvases) for an image of this size.

        The main canvas is the smallest configured one that holds the photo without shrinking
        it (a 250 px photo does not need 640x640, which costs ~6x the compute), else the
        largest. The complementary passes only run where the main canvas is more than twice
        their size: faces too large for SCRFD's anchors only exist on a canvas much larger
        than the face (a photo that fits a small canvas holds no face larger than it).
        """
        main = fitted_canvas(image_hw, self.fit_sizes, self.main_size)
        return main, tuple(size for size in self.extra_sizes if 2 * size < main)

    async def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Faces in each (H, W, 3) RGB image, best score first, at most `max_faces`.

        One detector call per canvas size carries every image that uses it; the calls run
        concurrently. Faces from an image's main canvas are kept as found; its complementary
        canvases only add faces that overlap none of them.
        """
        if not images:
            return []
        plans = [self.canvases(image.shape[:2]) for image in images]
        users: dict[int, list[int]] = {}
        for index, (main, extras) in enumerate(plans):
            for size in (main, *extras):
                users.setdefault(size, []).append(index)
        passes = await asyncio.gather(*(self._detect_pass([images[i] for i in users[s]], s) for s in users))
        by_size = {size: dict(zip(users[size], found, strict=True)) for size, found in zip(users, passes, strict=True)}
        results = []
        for index, (image, (main, extras)) in enumerate(zip(images, plans, strict=True)):
            found = by_size[main][index]
            if extras:
                extra = self._suppress(concat_detections([by_size[size][index] for size in extras]))
                found = add_missing_faces(found, extra, self.settings.nms_threshold).first(self.settings.max_faces)
            results.append(Detections(clip_boxes(found.boxes, image.shape[:2]), found.scores, found.landmarks))
        FACES_DETECTED.inc(sum(len(found) for found in results))
        return results

    async def _detect_pass(self, images: Sequence[np.ndarray], size: int) -> list[Detections]:
        binding = await self.backend.binding(DETECTOR)
        batch, scales = await asyncio.to_thread(self._prepare_canvases, images, size, binding)
        outputs = await self.backend.infer(DETECTOR, batch)
        threshold = self.settings.detection_threshold
        found = []
        for i, scale in enumerate(scales):
            raw = decode_scrfd({name: value[i] for name, value in outputs.items()}, (size, size), threshold)
            found.append(self._suppress(Detections(raw.boxes / scale, raw.scores, raw.landmarks / scale)))
        return found

    @staticmethod
    def _prepare_canvases(images: Sequence[np.ndarray], size: int, binding):
        batch = np.zeros((len(images), size, size, 3), np.uint8)
        scales = [letterbox(image, size, out=canvas)[1] for image, canvas in zip(images, batch, strict=True)]
        return model_input(batch, binding, SCRFD_MEAN, SCRFD_STD), scales

    def _suppress(self, found: Detections) -> Detections:
        if not len(found):
            return found
        return found.take(nms(found.boxes, found.scores, self.settings.nms_threshold)).first(self.settings.max_faces)

    async def embed(self, crops: np.ndarray) -> np.ndarray:
        """(N, 112, 112, 3) aligned RGB crops -> (N, D) unit-norm float32 embeddings, one batched call."""
        if crops.shape[0] == 0:
            return np.zeros((0, 0), np.float32)
        binding = await self.backend.binding(RECOGNIZER)
        batch = await asyncio.to_thread(model_input, crops, binding, ARCFACE_MEAN, ARCFACE_STD)
        outputs = await self.backend.infer(RECOGNIZER, batch)
        return l2_normalize(next(iter(outputs.values())).reshape(crops.shape[0], -1))

    async def crop_size(self) -> int:
        binding = await self.backend.binding(RECOGNIZER)
        # NHWC (folded uint8): (H, W, 3); NCHW (raw float): (3, H, W)
        height = binding.input_shape[0] if binding.input_shape[-1] == 3 else binding.input_shape[-1]
        return int(height) if height > 0 else ARCFACE_SIZE

    async def faces_with_embeddings(self, images: Sequence[np.ndarray]) -> list[tuple[Detections, np.ndarray]]:
        """Every face of every image with its embedding: (Detections, (N, D)) per image.

        One detector call per canvas size and one recognizer call for all faces of all images.
        """
        detections = await self.detect(images)
        size = await self.crop_size()
        pairs = list(zip(images, detections, strict=True))
        crops = await asyncio.to_thread(
            lambda: np.concatenate([align_faces(image, found.landmarks, size) for image, found in pairs])
        )
        embeddings = await self.embed(crops)
        out, start = [], 0
        for found in detections:
            out.append((found, embeddings[start : start + len(found)]))
            start += len(found)
        return out

    async def primary_embeddings(
        self, images: Sequence[np.ndarray], labels: Sequence[str] = ("the image",)
    ) -> list[tuple[Detections, np.ndarray]]:
        """For each image: its primary face (a 1-face `Detections`) and that face's embedding.

        Raises NoFaceDetected naming (by `labels`) the first image without a face.
        """
        detections = await self.detect(images)
        primaries = []
        for position, (image, found) in enumerate(zip(images, detections, strict=True)):
            if not len(found):
                raise NoFaceDetected(f"no face was detected in {labels[position]}")
            primaries.append(found.take([primary_face(found.boxes, image.shape[:2])]))
        size = await self.crop_size()
        pairs = list(zip(images, primaries, strict=True))
        crops = await asyncio.to_thread(
            lambda: np.concatenate([align_faces(image, face.landmarks, size) for image, face in pairs])
        )
        embeddings = await self.embed(crops)
        return [(face, embeddings[i]) for i, face in enumerate(primaries)]


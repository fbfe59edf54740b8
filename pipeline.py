"""Face detection, alignment and embedding: the orchestration of the `vision` math around the models.

`FacePipeline` strings the pure functions of `vision/` (shapes in their docstrings) around
the model calls, made through an injected `InferenceBackend` (in production
`triton_service.TritonClient`). CPU-heavy steps run in worker threads so the event loop
keeps feeding Triton's dynamic batcher.

Per image: letterbox onto a square canvas, decode SCRFD, NMS, map back by the letterbox
scale; a complementary pass on a small canvas adds the faces the main 640 canvas misses
(SCRFD-500M misses some large, close-up faces) without touching the faces it found; align
the five landmarks to the ArcFace template, embed, L2-normalise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from errors import LivenessUnavailable, NoFaceDetected
from settings import Settings
from telemetry.metrics import FACES_DETECTED
from triton_service import ANTISPOOF, DETECTOR, RECOGNIZER
from vision.alignment import ARCFACE_SIZE, align_faces, l2_normalize
from vision.antispoof import liveness_crops, real_scores
from vision.boxes import nms
from vision.detections import Detections, add_missing_faces, clip_boxes, concat_detections, primary_face
from vision.scrfd import CANVAS_MULTIPLE, decode_scrfd, fitted_canvas, letterbox, to_nchw

# Defaults when the served model config carries no normalisation parameters.
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5

NOT_INSTALLED = (
    "the anti-spoofing model is not installed: start the service with ANTISPOOF_FROM=<folder> "
    "(README, Anti-spoofing); every other route works without it"
)

cv2.setNumThreads(1)  # the API's threads plus Triton share two cores; no nested pools


@dataclass(frozen=True)
class AlignedFaces:
    """Faces of one image with what the recognizer was given and gave back.

    faces: N faces; crops: (N, S, S, 3) uint8 RGB, each aligned onto the ArcFace template (what was
    embedded, and what its sharpness is measured on); embeddings: (N, D) unit-norm float32.
    """

    faces: Detections
    crops: np.ndarray
    embeddings: np.ndarray


class InferenceBackend(Protocol):
    async def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    async def binding(self, model: str): ...  # -> object with `.parameters` and `.input_shape`

    async def serves(self, model: str) -> bool: ...


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
        self._antispoof_served = False  # remembered once seen: installing it needs a Triton restart anyway
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

    async def recognizer(self) -> tuple[str, str] | None:
        """(network name, sha256 of its ONNX file) of the served recognizer, as its config names them
        (`fr_name`, `fr_sha256`, written at installation from model_info.json; GET /models); None when
        the config carries no checksum (a hand-written one)."""
        parameters = (await self.backend.binding(RECOGNIZER)).parameters
        sha256 = parameters.get("fr_sha256", "").strip().lower()
        return (parameters.get("fr_name", "").strip(), sha256) if sha256 else None

    async def crop_size(self) -> int:
        binding = await self.backend.binding(RECOGNIZER)
        # NHWC (folded uint8): (H, W, 3); NCHW (raw float): (3, H, W)
        height = binding.input_shape[0] if binding.input_shape[-1] == 3 else binding.input_shape[-1]
        return int(height) if height > 0 else ARCFACE_SIZE

    async def aligned_faces(self, images: Sequence[np.ndarray]) -> list[AlignedFaces]:
        """Every face of every image with its aligned crop and embedding.

        One detector call per canvas size and one recognizer call for all faces of all images.
        """
        detections = await self.detect(images)
        crops, embeddings = await self._embed_faces(images, detections)
        out, start = [], 0
        for found in detections:
            end = start + len(found)
            out.append(AlignedFaces(found, crops[start:end], embeddings[start:end]))
            start = end
        return out

    async def faces_with_embeddings(self, images: Sequence[np.ndarray]) -> list[tuple[Detections, np.ndarray]]:
        """Every face of every image with its embedding: (Detections, (N, D)) per image (`aligned_faces`)."""
        return [(aligned.faces, aligned.embeddings) for aligned in await self.aligned_faces(images)]

    async def primary_embeddings(
        self, images: Sequence[np.ndarray], labels: Sequence[str] = ("the image",)
    ) -> list[AlignedFaces]:
        """For each image: its primary face (1 face), with its aligned crop and embedding.

        Raises NoFaceDetected naming (by `labels`) the first image without a face, before any embedding.
        """
        primaries = await self._primary_faces(images)
        for position, face in enumerate(primaries):
            if face is None:
                raise NoFaceDetected(f"no face was detected in {labels[position]}")
        crops, embeddings = await self._embed_faces(images, primaries)
        return [AlignedFaces(face, crops[i : i + 1], embeddings[i : i + 1]) for i, face in enumerate(primaries)]

    async def each_primary_embedding(self, images: Sequence[np.ndarray]) -> list[AlignedFaces | None]:
        """As `primary_embeddings`, with None for an image without a face (a batch where each image stands alone).

        One detector call per canvas size and one recognizer call for the primary faces of all images.
        """
        primaries = await self._primary_faces(images)
        found = [(i, face) for i, face in enumerate(primaries) if face is not None]
        crops, embeddings = await self._embed_faces([images[i] for i, _ in found], [face for _, face in found])
        out: list[AlignedFaces | None] = [None] * len(images)
        for row, (i, face) in enumerate(found):
            out[i] = AlignedFaces(face, crops[row : row + 1], embeddings[row : row + 1])
        return out

    async def _primary_faces(self, images: Sequence[np.ndarray]) -> list[Detections | None]:
        detections = await self.detect(images)
        return [
            found.take([primary_face(found.boxes, image.shape[:2])]) if len(found) else None
            for image, found in zip(images, detections, strict=True)
        ]

    async def _embed_faces(
        self, images: Sequence[np.ndarray], faces: Sequence[Detections]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every face of `faces[i]` aligned in `images[i]`, all in one recognizer call:
        ((N, S, S, 3) uint8 crops, (N, D) embeddings), N the faces of all images in order."""
        if not any(len(face) for face in faces):
            return np.zeros((0, ARCFACE_SIZE, ARCFACE_SIZE, 3), np.uint8), np.zeros((0, 0), np.float32)
        size = await self.crop_size()
        pairs = list(zip(images, faces, strict=True))
        crops = await asyncio.to_thread(
            lambda: np.concatenate([align_faces(image, face.landmarks, size) for image, face in pairs])
        )
        return crops, await self.embed(crops)

    async def has_liveness(self) -> bool:
        """Whether Triton serves the anti-spoofing model (checked until it does, then remembered)."""
        if not self._antispoof_served:
            self._antispoof_served = await self.backend.serves(ANTISPOOF)
        return self._antispoof_served

    async def require_liveness(self) -> None:
        """Raises LivenessUnavailable (with what to do) when the anti-spoofing model is not served."""
        if not await self.has_liveness():
            raise LivenessUnavailable(NOT_INSTALLED)

    async def liveness(self, images: Sequence[np.ndarray], faces: Sequence[Detections]) -> list[np.ndarray]:
        """Real scores in [0, 1] of every face: one (N_i,) float32 array per (H, W, 3) RGB image.

        All faces of all images go in one batched call: each face cropped at every network's scale
        (the authors' arithmetic, `vision.antispoof`), in the channel order the graph was made for
        (BGR, as the authors' cv2 code reads photos). Raises LivenessUnavailable when not installed.
        """
        await self.require_liveness()
        binding = await self.backend.binding(ANTISPOOF)
        scales = [float(s) for s in binding.parameters.get("fr_scales", "").split(",") if s]
        bgr = binding.parameters.get("fr_channel_order", "BGR") == "BGR"
        size = tuple(int(d) for d in binding.input_shape[1:3])  # (M, H, W, 3) without the batch

        def crops() -> np.ndarray:
            # Cut from the RGB image and flip the 80x80 crops, not the photo: the same pixels (resizing
            # treats each channel alone), without copying every window of a negative-stride BGR view
            # (the largest cost of the liveness path in the API, README Performance).
            per_image = [
                liveness_crops(image, found.boxes, scales, size).transpose(1, 0, 2, 3, 4)
                for image, found in zip(images, faces, strict=True)
            ]
            if not per_image:
                return np.zeros((0,), np.uint8)
            batch = np.concatenate(per_image)  # (N, M, H, W, 3), a fresh array
            return np.ascontiguousarray(batch[..., ::-1]) if bgr else batch

        batch = await asyncio.to_thread(crops)
        scores = np.zeros((0,), np.float32)
        if batch.shape[0]:
            probabilities = next(iter((await self.backend.infer(ANTISPOOF, batch)).values()))  # (N, M, 3)
            scores = real_scores(probabilities.transpose(1, 0, 2))
        bounds = np.cumsum([0, *(len(found) for found in faces)])
        return [scores[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

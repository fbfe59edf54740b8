"""Use cases on faces without the gallery: find them, embed the main one, compare two photos.

Each takes decoded (H, W, 3) RGB images and returns domain results (no HTTP): the routes in
`api/faces.py` parse the request, call one of these and shape the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from errors import FaceServiceError, ImageTooLarge, NoFaceDetected
from imaging.decode import Upload, read_each
from pipeline import FacePipeline
from settings import Settings
from usecases.liveness import LivenessCheck, Verdict
from vision.alignment import align_faces, cosine_similarity
from vision.detections import Detections


@dataclass(frozen=True)
class FoundFaces:
    """Every face of one image, best score first; `capped` when MAX_FACES cut the list."""

    faces: Detections
    capped: bool
    liveness: list[Verdict] | None = None  # one per face, only when asked for


@dataclass(frozen=True)
class Embedded:
    """The main face of one image (a 1-face `Detections`) and its (D,) unit embedding."""

    face: Detections
    embedding: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """Two photos' main faces compared; `aligned_*` (112, 112, 3) RGB crops only when asked for."""

    similarity: float
    same_person: bool
    threshold: float
    face_a: Detections
    face_b: Detections
    aligned_a: np.ndarray | None = None
    aligned_b: np.ndarray | None = None
    liveness_a: Verdict | None = None  # only when asked for
    liveness_b: Verdict | None = None


class FaceUseCases:
    """Detect, embed and compare: the face routes' use cases."""

    def __init__(self, pipeline: FacePipeline, liveness: LivenessCheck, settings: Settings) -> None:
        self.pipeline = pipeline
        self.liveness = liveness
        self.settings = settings

    async def detect(self, image: np.ndarray, liveness: bool = False) -> FoundFaces:
        """Every face; with `liveness` each face's verdict too (LivenessUnavailable when not installed)."""
        if liveness:
            await self.pipeline.require_liveness()
        [found] = await self.pipeline.detect([image])
        verdicts = (await self.liveness.verdicts([image], [found]))[0] if liveness else None
        return FoundFaces(found, capped=len(found) >= self.settings.max_faces, liveness=verdicts)

    async def embed(self, image: np.ndarray) -> Embedded:
        """Raises NoFaceDetected when the image holds no face."""
        [(face, vector)] = await self.pipeline.primary_embeddings([image])
        return Embedded(face, vector)

    async def embed_each(self, uploads: Sequence[Upload]) -> list[Embedded | FaceServiceError]:
        """The main face's embedding of every photo, in order; a photo that cannot be used gets its error
        (not an image, above the limits, no face) in its place and the others are still embedded.

        One detector call per canvas size and one recognizer call for all the photos' main faces.
        Raises ImageTooLarge, before reading any, for more than MAX_BATCH_IMAGES photos.
        """
        limit = self.settings.max_batch_images
        if len(uploads) > limit:
            raise ImageTooLarge(f"at most {limit} images per request (MAX_BATCH_IMAGES); {len(uploads)} were sent")
        settings = self.settings
        photos = await read_each(uploads, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
        decoded = [i for i, photo in enumerate(photos) if isinstance(photo, np.ndarray)]
        found = await self.pipeline.each_primary_embedding([photos[i] for i in decoded]) if decoded else []
        embedded = dict(zip(decoded, found, strict=True))
        results: list[Embedded | FaceServiceError] = []
        for i, photo in enumerate(photos):
            if isinstance(photo, FaceServiceError):
                results.append(photo)
            elif (item := embedded[i]) is None:
                results.append(NoFaceDetected(f"no face was detected in images[{i}]"))
            else:
                results.append(Embedded(*item))
        return results

    async def compare(
        self, image_a: np.ndarray, image_b: np.ndarray, include_aligned: bool = False, liveness: bool = False
    ) -> Comparison:
        """Cosine of the two main faces against SIMILARITY_THRESHOLD; raises NoFaceDetected naming the image."""
        if liveness:
            await self.pipeline.require_liveness()
        (face_a, vec_a), (face_b, vec_b) = await self.pipeline.primary_embeddings(
            [image_a, image_b], labels=("image_a", "image_b")
        )
        similarity = cosine_similarity(vec_a, vec_b)
        aligned: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if include_aligned:
            size = await self.pipeline.crop_size()
            pairs = ((image_a, face_a), (image_b, face_b))
            aligned = await asyncio.to_thread(lambda: tuple(align_faces(i, f.landmarks, size)[0] for i, f in pairs))
        verdicts = [None, None]
        if liveness:
            verdicts = [v for [v] in await self.liveness.verdicts([image_a, image_b], [face_a, face_b])]
        threshold = self.settings.similarity_threshold
        return Comparison(similarity, similarity >= threshold, threshold, face_a, face_b, *aligned, *verdicts)

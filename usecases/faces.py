"""Use cases on faces without the gallery: find them, embed the main one, compare two photos.

Each takes decoded (H, W, 3) RGB images and returns domain results (no HTTP): the routes in
`api/faces.py` parse the request, call one of these and shape the answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from pipeline import FacePipeline
from settings import Settings
from vision.alignment import align_faces, cosine_similarity
from vision.detections import Detections


@dataclass(frozen=True)
class FoundFaces:
    """Every face of one image, best score first; `capped` when MAX_FACES cut the list."""

    faces: Detections
    capped: bool


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


class FaceUseCases:
    """Detect, embed and compare: the face routes' use cases."""

    def __init__(self, pipeline: FacePipeline, settings: Settings) -> None:
        self.pipeline = pipeline
        self.settings = settings

    async def detect(self, image: np.ndarray) -> FoundFaces:
        [found] = await self.pipeline.detect([image])
        return FoundFaces(found, capped=len(found) >= self.settings.max_faces)

    async def embed(self, image: np.ndarray) -> Embedded:
        """Raises NoFaceDetected when the image holds no face."""
        [(face, vector)] = await self.pipeline.primary_embeddings([image])
        return Embedded(face, vector)

    async def compare(self, image_a: np.ndarray, image_b: np.ndarray, include_aligned: bool = False) -> Comparison:
        """Cosine of the two main faces against SIMILARITY_THRESHOLD; raises NoFaceDetected naming the image."""
        (face_a, vec_a), (face_b, vec_b) = await self.pipeline.primary_embeddings(
            [image_a, image_b], labels=("image_a", "image_b")
        )
        similarity = cosine_similarity(vec_a, vec_b)
        aligned: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if include_aligned:
            size = await self.pipeline.crop_size()
            pairs = ((image_a, face_a), (image_b, face_b))
            aligned = await asyncio.to_thread(lambda: tuple(align_faces(i, f.landmarks, size)[0] for i, f in pairs))
        threshold = self.settings.similarity_threshold
        return Comparison(similarity, similarity >= threshold, threshold, face_a, face_b, *aligned)

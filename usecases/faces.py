"""Use cases on faces without the gallery: find them, embed the main one, compare two photos.

Each takes decoded (H, W, 3) RGB images and returns domain results (no HTTP): the routes in
`api/faces.py` parse the request, call one of these and shape the answer. Every face comes with
its attributes (`vision.attributes`: head pose, size, sharpness, and the enrollment checks it
fails), measured on the crop the recognizer embedded; `detect`, which embeds nothing, aligns
each face for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from errors import FaceServiceError, ImageTooLarge, NoFaceDetected
from gallery.store import ModelFingerprint
from imaging.decode import Upload, read_each
from pipeline import AlignedFaces, FacePipeline
from settings import Settings
from usecases.liveness import LivenessCheck, Verdict
from usecases.reembed import served_fingerprint
from vision.alignment import cosine_similarity
from vision.attributes import FaceAttributes, face_attributes, image_face_attributes
from vision.detections import Detections
from vision.quality import QualityLimits


@dataclass(frozen=True)
class FoundFaces:
    """Every face of one image, best score first; `capped` when MAX_FACES cut the list."""

    faces: Detections
    capped: bool
    attributes: list[FaceAttributes]  # one per face
    liveness: list[Verdict] | None = None  # one per face, only when asked for


@dataclass(frozen=True)
class Embedded:
    """The main face of one image (a 1-face `Detections`), its (D,) unit embedding and attributes."""

    face: Detections
    embedding: np.ndarray
    attributes: FaceAttributes
    model: ModelFingerprint | None = None  # the recognizer that made it (None: its config names no sha256)


@dataclass(frozen=True)
class Comparison:
    """Two photos' main faces compared; `aligned_*` (112, 112, 3) RGB crops only when asked for."""

    similarity: float
    same_person: bool
    threshold: float
    face_a: Detections
    face_b: Detections
    attributes_a: FaceAttributes
    attributes_b: FaceAttributes
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
        self.limits = QualityLimits.from_settings(settings)

    async def detect(self, image: np.ndarray, liveness: bool = False) -> FoundFaces:
        """Every face with its attributes (each face aligned for them); with `liveness` each face's
        verdict too (LivenessUnavailable when not installed)."""
        if liveness:
            await self.pipeline.require_liveness()
        [found] = await self.pipeline.detect([image])
        attributes = []
        if len(found):
            size = await self.pipeline.crop_size()
            attributes = await asyncio.to_thread(image_face_attributes, image, found.landmarks, size, self.limits)
        verdicts = (await self.liveness.verdicts([image], [found]))[0] if liveness else None
        return FoundFaces(found, len(found) >= self.settings.max_faces, attributes, verdicts)

    async def measured(self, aligned: Sequence[AlignedFaces]) -> list[list[FaceAttributes]]:
        """The attributes of every face of each `AlignedFaces`, from the crops already embedded."""
        return await asyncio.to_thread(
            lambda: [face_attributes(a.faces.landmarks, a.crops, self.limits) for a in aligned]
        )

    async def embed(self, image: np.ndarray) -> Embedded:
        """Raises NoFaceDetected when the image holds no face."""
        [aligned] = await self.pipeline.primary_embeddings([image])
        [[attributes]] = await self.measured([aligned])
        return Embedded(aligned.faces, aligned.embeddings[0], attributes, await served_fingerprint(self.pipeline))

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
        attributes = iter(await self.measured([item for item in found if item is not None]))  # in photo order
        model = await served_fingerprint(self.pipeline) if found else None
        results: list[Embedded | FaceServiceError] = []
        for i, photo in enumerate(photos):
            if isinstance(photo, FaceServiceError):
                results.append(photo)
            elif (item := embedded[i]) is None:
                results.append(NoFaceDetected(f"no face was detected in images[{i}]"))
            else:
                [measured] = next(attributes)
                results.append(Embedded(item.faces, item.embeddings[0], measured, model))
        return results

    async def compare(
        self, image_a: np.ndarray, image_b: np.ndarray, include_aligned: bool = False, liveness: bool = False
    ) -> Comparison:
        """Cosine of the two main faces against SIMILARITY_THRESHOLD; raises NoFaceDetected naming the image."""
        if liveness:
            await self.pipeline.require_liveness()
        a, b = await self.pipeline.primary_embeddings([image_a, image_b], labels=("image_a", "image_b"))
        similarity = cosine_similarity(a.embeddings[0], b.embeddings[0])
        [[attributes_a], [attributes_b]] = await self.measured([a, b])
        aligned = (a.crops[0], b.crops[0]) if include_aligned else (None, None)  # the crops embedded
        verdicts = [None, None]
        if liveness:
            verdicts = [v for [v] in await self.liveness.verdicts([image_a, image_b], [a.faces, b.faces])]
        threshold = self.settings.similarity_threshold
        return Comparison(similarity, similarity >= threshold, threshold, a.faces, b.faces, attributes_a,
                          attributes_b, *aligned, *verdicts)

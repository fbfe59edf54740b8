"""Use cases that write faces into the gallery: enroll a person, add photos to one.

A photo is enrolled only when its main face is usable: one face clearly the subject, large,
sharp and frontal enough (`vision.quality`, limits from Settings). Every other photo is
returned with the reason it was refused; a request with no usable photo stores nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from errors import FaceServiceError, ImageTooLarge, InvalidImage, NoUsableFace
from gallery.store import Gallery, Identity
from imaging.decode import Upload, read_upload
from pipeline import FacePipeline
from settings import Settings
from usecases.liveness import LivenessCheck
from vision.alignment import align_faces
from vision.detections import Detections, has_clear_subject, primary_face
from vision.quality import QualityLimits, face_quality, face_size, quality_problem

# One uploaded photo after decoding: (H, W, 3) RGB pixels, or the decoding error that
# becomes this photo's refusal reason.
Photo = np.ndarray | FaceServiceError


@dataclass(frozen=True)
class Refused:
    index: int  # position of the photo in the request
    reason: str


@dataclass(frozen=True)
class Enrolled:
    identity: Identity
    refused: list[Refused]


def enrollment_problem(image: np.ndarray, found: Detections, settings: Settings, crop_size: int) -> str | None:
    """Why the main face of one photo should not be enrolled, or None (vision.quality's checks).

    Several faces: refused when none is clearly the subject (a group photo); a portrait with
    smaller, off-centre bystanders passes unless ENROLL_SINGLE_FACE_ONLY, which refuses any
    second face of enrollable size.
    """
    if len(found) == 0:
        return "no face detected"
    if not has_clear_subject(found.boxes, image.shape[:2]):
        return f"more than one face ({len(found)}) and none is clearly the subject: use a photo of the person"
    if settings.enroll_single_face_only:
        sizable = sum(face_size(points) >= settings.enroll_min_face_size for points in found.landmarks)
        if sizable > 1:
            return f"more than one face ({sizable}): use a photo of the person alone"
    main = primary_face(found.boxes, image.shape[:2])
    crop = align_faces(image, found.landmarks[main : main + 1], crop_size)[0]
    return quality_problem(face_quality(found.landmarks[main], crop), QualityLimits.from_settings(settings))


class Enrollment:
    """Enroll people and add photos to them, refusing unusable photos with reasons."""

    def __init__(self, pipeline: FacePipeline, gallery: Gallery, liveness: LivenessCheck, settings: Settings) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.liveness = liveness
        self.settings = settings

    async def enroll(self, name: str, metadata: dict, uploads: Sequence[Upload]) -> Enrolled:
        """A new identity from the usable photos; raises NoUsableFace (nothing stored) when none is."""
        vectors, refused = await self.usable_embeddings(await self.read_photos(uploads))
        identity = await asyncio.to_thread(self.gallery.create, name, metadata, vectors)
        return Enrolled(identity, refused)

    async def add_faces(self, identity_id: str, uploads: Sequence[Upload]) -> Enrolled:
        """The usable photos added to an existing identity (IdentityNotFound before anything is read)."""
        await asyncio.to_thread(self.gallery.get, identity_id)
        vectors, refused = await self.usable_embeddings(await self.read_photos(uploads))
        identity = await asyncio.to_thread(self.gallery.add_faces, identity_id, vectors)
        return Enrolled(identity, refused)

    async def read_photos(self, uploads: Sequence[Upload]) -> list[Photo]:
        """Each upload decoded within the limits, or the error that becomes its refusal reason."""
        settings = self.settings
        if len(uploads) > settings.max_enroll_images:
            raise ImageTooLarge(f"at most {settings.max_enroll_images} images per request")
        photos: list[Photo] = []
        for upload in uploads:
            try:
                photos.append(
                    await read_upload(upload, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
                )
            except (InvalidImage, ImageTooLarge) as error:
                photos.append(error)
        return photos

    async def usable_embeddings(self, photos: Sequence[Photo]) -> tuple[np.ndarray, list[Refused]]:
        """(K, D) embeddings of the usable photos' main faces, and every other photo with its reason."""
        refused = [Refused(i, p.message) for i, p in enumerate(photos) if isinstance(p, FaceServiceError)]
        positions = [i for i, p in enumerate(photos) if not isinstance(p, FaceServiceError)]
        images = [photos[i] for i in positions]
        if self.settings.enroll_require_live:
            await self.pipeline.require_liveness()  # a clear 503 before any work when it cannot be checked
        results = await self.pipeline.faces_with_embeddings(images) if images else []
        crop_size = await self.pipeline.crop_size()
        usable = []  # (index, image, main face, its embedding)
        for index, image, (found, embeddings) in zip(positions, images, results, strict=True):
            reason = enrollment_problem(image, found, self.settings, crop_size)
            if reason is None:
                main = primary_face(found.boxes, image.shape[:2])
                usable.append((index, image, found.take([main]), embeddings[main]))
            else:
                refused.append(Refused(index, reason))
        if self.settings.enroll_require_live and usable:
            usable, spoofed = await self.live_only(usable)
            refused += spoofed
        vectors = [embedding for _, _, _, embedding in usable]
        refused.sort(key=lambda r: r.index)
        if not vectors:
            raise NoUsableFace("; ".join(f"image {r.index}: {r.reason}" for r in refused))
        return np.stack(vectors), refused

    async def live_only(self, usable: list) -> tuple[list, list[Refused]]:
        """ENROLL_REQUIRE_LIVE: the photos whose main face the anti-spoofing model calls live, and the rest."""
        verdicts = await self.liveness.verdicts([u[1] for u in usable], [u[2] for u in usable])
        live, spoofed = [], []
        for item, [verdict] in zip(usable, verdicts, strict=True):
            if verdict.is_real:
                live.append(item)
            else:
                spoofed.append(Refused(item[0], (
                    f"looks like a photo of a photo or a screen, not a live face "
                    f"(real score {verdict.real_score:.2f}; at least {self.liveness.threshold:g})"
                )))
        return live, spoofed

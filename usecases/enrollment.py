"""Use cases that write faces into the gallery: enroll a person, add photos to one.

A photo is enrolled only when its main face is usable: one face clearly the subject, large,
sharp and frontal enough (`vision.quality`, limits from Settings). Every other photo is
returned with the reason it was refused; a request with no usable photo stores nothing. Each
stored sample keeps what the gate measured (size, sharpness, detection score, head pose), the
uploaded file's name, and its aligned crop (GALLERY_KEEP_CROPS), to re-embed it from.

A person may also be enrolled from embeddings a client computed with this service's recognizer
(`enroll_embeddings`): nothing is measured then, and no crop kept. Either way a new person whose
faces match someone enrolled at or above IDENTIFY_THRESHOLD (scored as identification scores)
comes back with those people as `duplicates`, or is refused (DuplicateIdentity, 409, nothing
stored) when the caller asks for that. The check and the store are two steps: two enrollments
of the same new person at the same moment can both pass it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from errors import DuplicateIdentity, FaceServiceError, ImageTooLarge, InvalidImage, NoUsableFace
from gallery.store import Identity, Match, Sample
from imaging.crops import encode_crop
from imaging.decode import Upload, read_upload
from settings import Settings
from usecases.gallery_use_case import GalleryUseCase
from usecases.vectors import client_vectors
from vision.alignment import align_faces
from vision.detections import Detections, has_clear_subject, primary_face
from vision.quality import FaceQuality, QualityLimits, face_quality, face_size, quality_problem

DUPLICATE_CANDIDATES = 5  # nearest people looked at per new face when checking for duplicates

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
    # People enrolled before whose score for one of the new faces reached IDENTIFY_THRESHOLD: each
    # once, with their best similarity, most similar first (only checked for a new person).
    duplicates: list[Match] = field(default_factory=list)


@dataclass(frozen=True)
class Assessment:
    """One photo's main face judged for enrollment: why it is refused (None: usable), and what was
    measured on the way (the main face's index, its quality and aligned crop; None when it was
    refused before they were measured)."""

    problem: str | None
    main: int | None = None
    quality: FaceQuality | None = None
    crop: np.ndarray | None = None  # (S, S, 3) uint8 RGB: what the recognizer embedded


def assess(image: np.ndarray, found: Detections, settings: Settings, crop_size: int) -> Assessment:
    """Why the main face of one photo should not be enrolled, or None, with its measurements (vision.quality).

    Several faces: refused when none is clearly the subject (a group photo); a portrait with
    smaller, off-centre bystanders passes unless ENROLL_SINGLE_FACE_ONLY, which refuses any
    second face of enrollable size.
    """
    if len(found) == 0:
        return Assessment("no face detected")
    if not has_clear_subject(found.boxes, image.shape[:2]):
        return Assessment(
            f"more than one face ({len(found)}) and none is clearly the subject: use a photo of the person"
        )
    if settings.enroll_single_face_only:
        sizable = sum(face_size(points) >= settings.enroll_min_face_size for points in found.landmarks)
        if sizable > 1:
            return Assessment(f"more than one face ({sizable}): use a photo of the person alone")
    main = primary_face(found.boxes, image.shape[:2])
    crop = align_faces(image, found.landmarks[main : main + 1], crop_size)[0]
    quality = face_quality(found.landmarks[main], crop)
    return Assessment(quality_problem(quality, QualityLimits.from_settings(settings)), main, quality, crop)


def sample_of(assessment: Assessment, score: float, source: str | None, crop: bytes | None,
              model_sha256: str | None) -> Sample:
    """What the gallery stores beside a usable face's embedding: the gate's own measurements."""
    quality = assessment.quality
    return Sample(face_size=quality.size, sharpness=quality.sharpness, detection_score=score, yaw=quality.yaw,
                  pitch=quality.pitch, roll=quality.roll, source=source or None, crop=crop, model_sha256=model_sha256)


@dataclass(frozen=True)
class Usable:
    """One usable photo: its position in the request, pixels, main face, embedding and assessment."""

    index: int
    image: np.ndarray
    face: Detections
    embedding: np.ndarray
    assessment: Assessment


class Enrollment(GalleryUseCase):
    """Enroll people and add photos to them, refusing unusable photos with reasons."""

    async def enroll(
        self, name: str, metadata: dict, uploads: Sequence[Upload], reject_duplicates: bool = False,
        model_sha256: str | None = None,
    ) -> Enrolled:
        """A new identity from the usable photos; raises NoUsableFace (nothing stored) when none is,
        DuplicateIdentity (nothing stored) with `reject_duplicates` when they match someone enrolled.

        The answer's `identity.face_ids` are the new samples' ids, in the order of the usable photos."""
        model = await self.checked_model(model_sha256)
        vectors, samples, refused = await self.usable_samples(await self.read_photos(uploads), uploads, model)
        duplicates = await self.duplicates_of(vectors, reject_duplicates)
        identity = await asyncio.to_thread(self.gallery.create, name, metadata, vectors, samples)
        return Enrolled(identity, refused, duplicates)

    async def enroll_embeddings(
        self, name: str, metadata: dict, rows: object, model_sha256: str | None = None,
        reject_duplicates: bool = False,
    ) -> Enrolled:
        """A new identity from a client's embeddings (lists of 512 numbers, at most MAX_ENROLL_IMAGES), each one
        sample. InvalidEmbedding (422) / ImageTooLarge (413) for unusable vectors, ModelMismatch (409) when
        `model_sha256` is not the served recognizer's, DuplicateIdentity as `enroll`: nothing stored then."""
        vectors = client_vectors(rows, self.settings.max_enroll_images)
        model = await self.checked_model(model_sha256)
        duplicates = await self.duplicates_of(vectors, reject_duplicates)
        samples = [Sample(model_sha256=model)] * len(vectors)
        identity = await asyncio.to_thread(self.gallery.create, name, metadata, vectors, samples)
        return Enrolled(identity, [], duplicates)

    async def duplicates_of(self, vectors: np.ndarray, reject: bool) -> list[Match]:
        """The people enrolled whom any of `vectors` identifies (at IDENTIFY_THRESHOLD), best first;
        with `reject`, DuplicateIdentity when there is one."""
        threshold = self.settings.identify_threshold
        best: dict[str, Match] = {}
        for matches in await asyncio.to_thread(self.gallery.search, vectors, DUPLICATE_CANDIDATES):
            for match in matches:
                known = best.get(match.id)
                if match.similarity >= threshold and (known is None or match.similarity > known.similarity):
                    best[match.id] = match
        found = sorted(best.values(), key=lambda m: -m.similarity)
        if reject and found:
            named = ", ".join(f"{m.name!r} ({m.id}, similarity {m.similarity:.3f})" for m in found)
            raise DuplicateIdentity(
                f"the faces match {'someone' if len(found) == 1 else 'people'} already enrolled: {named}, at or above "
                f"the identification threshold {threshold:g}; nothing was stored (on_duplicate=reject). Add the "
                "photos to that person (POST /identities/{id}/faces), or enroll without on_duplicate=reject"
            )
        return found

    async def add_faces(self, identity_id: str, uploads: Sequence[Upload]) -> Enrolled:
        """The usable photos added to an existing identity (IdentityNotFound before anything is read)."""
        await asyncio.to_thread(self.gallery.get, identity_id)
        model = await self.checked_model()
        vectors, samples, refused = await self.usable_samples(await self.read_photos(uploads), uploads, model)
        identity = await asyncio.to_thread(self.gallery.add_faces, identity_id, vectors, samples)
        return Enrolled(identity, refused)

    async def checked_model(self, model_sha256: str | None = None) -> str | None:
        """sha256 of the served recognizer once it is known to be the gallery's (GalleryModelMismatch: 503)
        and, when the client names one, the client's (ModelMismatch: 409)."""
        if self.model is None:
            return None
        served = await self.model.require(model_sha256)
        return served.sha256 if served else None

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

    async def usable_samples(
        self, photos: Sequence[Photo], uploads: Sequence[Upload] = (), model_sha256: str | None = None
    ) -> tuple[np.ndarray, list[Sample], list[Refused]]:
        """(K, D) embeddings of the usable photos' main faces with what to store beside each (their
        measurements, the uploads' file names, their crops when GALLERY_KEEP_CROPS), and every other
        photo with its reason. Raises NoUsableFace when no photo is usable."""
        refused = [Refused(i, p.message) for i, p in enumerate(photos) if isinstance(p, FaceServiceError)]
        positions = [i for i, p in enumerate(photos) if not isinstance(p, FaceServiceError)]
        images = [photos[i] for i in positions]
        if self.settings.enroll_require_live:
            await self.pipeline.require_liveness()  # a clear 503 before any work when it cannot be checked
        results = await self.pipeline.faces_with_embeddings(images) if images else []
        crop_size = await self.pipeline.crop_size()
        usable: list[Usable] = []
        for index, image, (found, embeddings) in zip(positions, images, results, strict=True):
            assessment = assess(image, found, self.settings, crop_size)
            if assessment.problem is None:
                main = assessment.main
                usable.append(Usable(index, image, found.take([main]), embeddings[main], assessment))
            else:
                refused.append(Refused(index, assessment.problem))
        if self.settings.enroll_require_live and usable:
            usable, spoofed = await self.live_only(usable)
            refused += spoofed
        refused.sort(key=lambda r: r.index)
        if not usable:
            raise NoUsableFace("; ".join(f"image {r.index}: {r.reason}" for r in refused))
        keep = self.settings.gallery_keep_crops
        crops = await asyncio.to_thread(lambda: [encode_crop(u.assessment.crop) if keep else None for u in usable])
        names = [getattr(upload, "filename", None) for upload in uploads] or [None] * len(photos)
        samples = [sample_of(u.assessment, float(u.face.scores[0]), names[u.index], crop, model_sha256)
                   for u, crop in zip(usable, crops, strict=True)]
        return np.stack([u.embedding for u in usable]), samples, refused

    async def live_only(self, usable: list[Usable]) -> tuple[list[Usable], list[Refused]]:
        """ENROLL_REQUIRE_LIVE: the photos whose main face the anti-spoofing model calls live, and the rest."""
        verdicts = await self.liveness.verdicts([u.image for u in usable], [u.face for u in usable])
        live, spoofed = [], []
        for item, [verdict] in zip(usable, verdicts, strict=True):
            if verdict.is_real:
                live.append(item)
            else:
                spoofed.append(Refused(item.index, (
                    f"looks like a photo of a photo or a screen, not a live face "
                    f"(real score {verdict.real_score:.2f}; at least {self.liveness.threshold:g})"
                )))
        return live, spoofed

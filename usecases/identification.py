"""Use case: name every face of a photo from the gallery, or call it unknown; or name a client's embeddings.

Both go through one scoring (`name`: the gallery's search, the threshold), so a face
and its embedding sent back are named alike. Every face also gets its attributes
(`vision.attributes`: head pose, size, sharpness, the enrollment checks it fails), measured on
the crop the recognizer embedded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from gallery.store import Match, ModelFingerprint
from usecases.gallery_use_case import GalleryUseCase
from usecases.liveness import Verdict
from usecases.vectors import client_vectors
from vision.attributes import FaceAttributes, face_attributes
from vision.detections import Detections


@dataclass(frozen=True)
class IdentifiedFace:
    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    identity: Match | None  # the best match when it reaches the threshold, else None (unknown)
    matches: list[Match]  # the top_k nearest people, best first
    attributes: FaceAttributes
    liveness: Verdict | None = None  # only when asked for


@dataclass(frozen=True)
class Identified:
    faces: Detections
    threshold: float
    identified: list[IdentifiedFace]  # one per face of `faces`, same order


@dataclass(frozen=True)
class NamedVectors:
    threshold: float
    named: list[tuple[Match | None, list[Match]]]  # per vector sent, in order: (who it is or None, top_k nearest)
    model: ModelFingerprint | None  # the served recognizer the vectors were compared as


class Identification(GalleryUseCase):
    async def identify(
        self, image: np.ndarray, top_k: int, threshold: float | None = None, liveness: bool = False
    ) -> Identified:
        """Every face of the image with its top_k gallery matches; IDENTIFY_THRESHOLD unless `threshold`.

        With `liveness` every face also gets its verdict (LivenessUnavailable when not installed).
        """
        cut = self.threshold(threshold)
        await self.check_ready(liveness)
        [aligned] = await self.pipeline.aligned_faces([image])
        found = aligned.faces
        named = await self.name(aligned.embeddings, top_k, cut)
        attributes = await asyncio.to_thread(face_attributes, found.landmarks, aligned.crops, self.limits)
        verdicts = (await self.liveness.verdicts([image], [found]))[0] if liveness else [None] * len(found)
        identified = []
        for box, score, (best, matches), measured, verdict in zip(
            found.boxes, found.scores, named, attributes, verdicts, strict=True
        ):
            identified.append(IdentifiedFace(box, float(score), best, matches, measured, verdict))
        return Identified(found, cut, identified)

    def threshold(self, threshold: float | None) -> float:
        """The cut a face is named at: `threshold`, or IDENTIFY_THRESHOLD."""
        return self.settings.identify_threshold if threshold is None else threshold

    async def name(
        self, embeddings: np.ndarray, top_k: int, threshold: float
    ) -> list[tuple[Match | None, list[Match]]]:
        """For each of the (N, D) embeddings: (the best match when it reaches `threshold`, else None;
        the top_k nearest people, best first). One gallery search for all of them."""
        if not len(embeddings):
            return []
        if self.model is not None:
            await self.model.ensure()  # GalleryModelMismatch (503) rather than matches of another model
        candidates = await asyncio.to_thread(self.gallery.search, embeddings, top_k)
        return [(matches[0] if matches and matches[0].similarity >= threshold else None, matches)
                for matches in candidates]

    async def identify_embeddings(
        self, rows: object, top_k: int, threshold: float | None = None, model_sha256: str | None = None
    ) -> NamedVectors:
        """A client's embeddings (lists of 512 numbers, at most MAX_BATCH_IMAGES) named as `identify` names faces
        (`name`: the same search and threshold).

        Raises InvalidEmbedding (422) or ImageTooLarge (413) for unusable vectors, ModelMismatch (409)
        when `model_sha256` is not the served recognizer's, before anything is searched.
        """
        vectors = client_vectors(rows, self.settings.max_batch_images)
        cut = self.threshold(threshold)
        served = await self.model.require(model_sha256) if self.model is not None else None
        return NamedVectors(cut, await self.name(vectors, top_k, cut), served)

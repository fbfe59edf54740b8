"""Use case: name every face of a photo from the gallery, or call it unknown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from gallery.store import Gallery, Match
from pipeline import FacePipeline
from settings import Settings
from usecases.liveness import LivenessCheck, Verdict
from vision.detections import Detections


@dataclass(frozen=True)
class IdentifiedFace:
    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    identity: Match | None  # the best match when it reaches the threshold, else None (unknown)
    matches: list[Match]  # the top_k nearest people, best first
    liveness: Verdict | None = None  # only when asked for


@dataclass(frozen=True)
class Identified:
    faces: Detections
    threshold: float
    identified: list[IdentifiedFace]  # one per face of `faces`, same order


class Identification:
    def __init__(self, pipeline: FacePipeline, gallery: Gallery, liveness: LivenessCheck, settings: Settings) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.liveness = liveness
        self.settings = settings

    async def identify(
        self, image: np.ndarray, top_k: int, threshold: float | None = None, liveness: bool = False
    ) -> Identified:
        """Every face of the image with its top_k gallery matches; IDENTIFY_THRESHOLD unless `threshold`.

        With `liveness` every face also gets its verdict (LivenessUnavailable when not installed).
        """
        cut = self.threshold(threshold)
        if liveness:
            await self.pipeline.require_liveness()
        [(found, embeddings)] = await self.pipeline.faces_with_embeddings([image])
        named = await self.name(embeddings, top_k, cut)
        verdicts = (await self.liveness.verdicts([image], [found]))[0] if liveness else [None] * len(found)
        identified = []
        for box, score, (best, matches), verdict in zip(found.boxes, found.scores, named, verdicts, strict=True):
            identified.append(IdentifiedFace(box, float(score), best, matches, verdict))
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
        candidates = await asyncio.to_thread(self.gallery.search, embeddings, top_k)
        return [(matches[0] if matches and matches[0].similarity >= threshold else None, matches)
                for matches in candidates]

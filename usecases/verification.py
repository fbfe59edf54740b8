"""Use case: 1:1 verification, is the main face of a photo this enrolled person?

The face is scored against that one person exactly as identification scores people (the
gallery's scoring, centroid or best sample: `Gallery.score_identity`), whether or not they
would be among its nearest, and is the person when the similarity reaches the threshold
(IDENTIFY_THRESHOLD unless the request gives one): a verification and an identification of
the same photo agree.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from gallery.store import Match
from usecases.gallery_use_case import GalleryUseCase
from usecases.liveness import Verdict
from vision.attributes import FaceAttributes, face_attributes
from vision.detections import Detections


@dataclass(frozen=True)
class Verified:
    identity: Match  # the person asked about, with the face's similarity to them
    same_person: bool  # identity.similarity >= threshold
    threshold: float
    face: Detections  # the photo's main face (one face), chosen as /embedding chooses
    attributes: FaceAttributes
    liveness: Verdict | None = None  # only when asked for


class Verification(GalleryUseCase):
    async def verify(
        self, identity_id: str, image: np.ndarray, threshold: float | None = None, liveness: bool = False
    ) -> Verified:
        """IdentityNotFound (before any inference), NoFaceDetected, LivenessUnavailable with `liveness`."""
        await asyncio.to_thread(self.gallery.get, identity_id)
        cut = self.settings.identify_threshold if threshold is None else threshold
        await self.check_ready(liveness)
        [aligned] = await self.pipeline.primary_embeddings([image])
        [match] = await asyncio.to_thread(self.gallery.score_identity, identity_id, aligned.embeddings)
        [attributes] = await asyncio.to_thread(face_attributes, aligned.faces.landmarks, aligned.crops, self.limits)
        verdict = (await self.liveness.verdicts([image], [aligned.faces]))[0][0] if liveness else None
        return Verified(match, match.similarity >= cut, cut, aligned.faces, attributes, verdict)

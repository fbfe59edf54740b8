"""Use case: is a face live, or a photo of one (a print, a screen)? The optional anti-spoofing model.

The other use cases ask this one for verdicts (`?liveness=true`, ENROLL_REQUIRE_LIVE), so the
threshold and the counting live in one place. `real_score` is the mean over the networks of the
softmax probability of the real class; `is_real` is `real_score >= LIVENESS_THRESHOLD`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from errors import NoFaceDetected
from pipeline import FacePipeline
from settings import Settings
from telemetry.metrics import LIVENESS_CHECKS
from vision.detections import Detections, primary_face


@dataclass(frozen=True)
class Verdict:
    real_score: float
    is_real: bool


@dataclass(frozen=True)
class CheckedFace:
    face: Detections  # the image's primary face (one face), chosen as /embedding chooses
    verdict: Verdict
    threshold: float


class LivenessCheck:
    def __init__(self, pipeline: FacePipeline, settings: Settings) -> None:
        self.pipeline = pipeline
        self.threshold = settings.liveness_threshold

    async def verdicts(self, images: Sequence[np.ndarray], faces: Sequence[Detections]) -> list[list[Verdict]]:
        """A verdict for every face of every image, all in one batched model call."""
        scores = await self.pipeline.liveness(images, faces)
        verdicts = [[Verdict(round(float(s), 6), bool(s >= self.threshold)) for s in image] for image in scores]
        for image in verdicts:
            for verdict in image:
                LIVENESS_CHECKS.labels("real" if verdict.is_real else "spoof").inc()
        return verdicts

    async def check(self, image: np.ndarray) -> CheckedFace:
        """The primary face of one image and its verdict; raises NoFaceDetected, LivenessUnavailable."""
        await self.pipeline.require_liveness()  # before any detection: a clear 503, cheaply
        [found] = await self.pipeline.detect([image])
        if not len(found):
            raise NoFaceDetected("no face was detected in the image")
        face = found.take([primary_face(found.boxes, image.shape[:2])])
        [[verdict]] = await self.verdicts([image], [face])
        return CheckedFace(face, verdict, self.threshold)

"""The liveness use case's verdicts and ENROLL_REQUIRE_LIVE's refusals, on a stand-in pipeline."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from settings import Settings
from usecases.enrollment import Assessment, Enrollment, Usable
from usecases.liveness import LivenessCheck
from vision.detections import Detections


class ScoringPipeline:
    """Returns the given real scores, one per face, in order."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    async def require_liveness(self) -> None:
        return None

    async def liveness(self, images, faces) -> list[np.ndarray]:
        out, start = [], 0
        for found in faces:
            out.append(np.asarray(self.scores[start : start + len(found)], np.float32))
            start += len(found)
        return out


def one_face() -> Detections:
    return Detections(np.array([[0, 0, 10, 10]], np.float32), np.ones(1, np.float32), np.zeros((1, 5, 2), np.float32))


@pytest.mark.parametrize(
    ("score", "threshold", "is_real"),
    [(0.5, 0.5, True), (0.4999, 0.5, False), (0.0, 0.0, True), (1.0, 1.0, True), (0.99, 1.0, False)],
)
def test_a_face_is_real_at_or_above_the_threshold(score: float, threshold: float, is_real: bool) -> None:
    check = LivenessCheck(ScoringPipeline([score]), Settings(liveness_threshold=threshold))
    [[verdict]] = asyncio.run(check.verdicts([np.zeros((10, 10, 3), np.uint8)], [one_face()]))
    assert verdict.is_real is is_real and verdict.real_score == pytest.approx(score, abs=1e-6)


def test_required_liveness_refuses_spoofs_with_the_score_and_the_limit() -> None:
    settings = Settings(enroll_require_live=True, liveness_threshold=0.5)
    pipeline = ScoringPipeline([0.91, 0.123])
    enrollment = Enrollment(pipeline, gallery=None, liveness=LivenessCheck(pipeline, settings), settings=settings)
    image = np.zeros((10, 10, 3), np.uint8)
    usable = [Usable(0, image, one_face(), np.ones(4), Assessment(None)),
              Usable(3, image, one_face(), np.zeros(4), Assessment(None))]
    live, refused = asyncio.run(enrollment.live_only(usable))
    assert [item.index for item in live] == [0]
    [spoof] = refused
    assert spoof.index == 3 and "real score 0.12" in spoof.reason and "at least 0.5" in spoof.reason

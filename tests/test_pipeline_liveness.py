"""FacePipeline's anti-spoofing call with a stand-in for Triton: crops, colour order, one batch, per-image split."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from errors import LivenessUnavailable
from pipeline import FacePipeline
from settings import Settings
from vision.detections import Detections


class Binding:
    def __init__(self, channel_order: str) -> None:
        self.parameters = {"fr_scales": "2.7,4", "fr_channel_order": channel_order}
        self.input_shape = (2, 80, 80, 3)


class AntispoofBackend:
    """'Real' in proportion to the first channel of the crop at the first scale: tells BGR from RGB."""

    def __init__(self, installed: bool = True, channel_order: str = "BGR") -> None:
        self.installed = installed
        self.channel_order = channel_order
        self.batches: list[np.ndarray] = []
        self.readiness_checks = 0

    async def serves(self, model: str) -> bool:
        self.readiness_checks += 1
        return self.installed

    async def binding(self, model: str) -> Binding:
        return Binding(self.channel_order)

    async def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch)
        real = batch[:, 0, :, :, 0].mean(axis=(1, 2)) / 255.0  # (N,)
        probabilities = np.stack([1 - real, real, np.zeros_like(real)], axis=-1)  # (N, 3)
        return {"probabilities": np.repeat(probabilities[:, None, :], batch.shape[1], axis=1).astype(np.float32)}


def faces(count: int) -> Detections:
    boxes = np.array([[20 + 30 * i, 20, 60 + 30 * i, 70] for i in range(count)], np.float32)
    return Detections(boxes, np.full(count, 0.9, np.float32), np.zeros((count, 5, 2), np.float32))


RED = np.zeros((200, 200, 3), np.uint8)
RED[..., 0] = 255  # RGB red: its BGR crops carry 0 in channel 0
BLUE = np.zeros((200, 200, 3), np.uint8)
BLUE[..., 2] = 255  # RGB blue: 255 in BGR channel 0


def run(backend: AntispoofBackend, images, found):
    return asyncio.run(FacePipeline(backend, Settings()).liveness(images, found))


def test_every_face_of_every_image_goes_in_one_batch_and_comes_back_per_image() -> None:
    backend = AntispoofBackend()
    scores = run(backend, [RED, BLUE], [faces(2), faces(1)])
    [batch] = backend.batches
    assert batch.shape == (3, 2, 80, 80, 3) and batch.dtype == np.uint8
    assert [s.shape for s in scores] == [(2,), (1,)]
    np.testing.assert_allclose(np.concatenate(scores), [0, 0, 1], atol=1e-6)  # RGB decoded, BGR crops sent


def test_a_graph_made_for_rgb_gets_the_decoded_order() -> None:
    scores = run(AntispoofBackend(channel_order="RGB"), [RED], [faces(1)])
    np.testing.assert_allclose(scores[0], [1], atol=1e-6)


def test_images_without_faces_make_no_call() -> None:
    backend = AntispoofBackend()
    assert [s.shape for s in run(backend, [RED, BLUE], [faces(0), faces(0)])] == [(0,), (0,)]
    assert backend.batches == []


def test_not_installed_is_a_clear_error_and_installed_is_remembered() -> None:
    with pytest.raises(LivenessUnavailable, match="ANTISPOOF_FROM"):
        run(AntispoofBackend(installed=False), [RED], [faces(1)])
    backend = AntispoofBackend()
    pipeline = FacePipeline(backend, Settings())
    for _ in range(3):
        asyncio.run(pipeline.liveness([RED], [faces(1)]))
    assert backend.readiness_checks == 1


def test_the_crops_sent_are_the_authors_crops_of_the_bgr_photo_pixel_for_pixel() -> None:
    # Cut from RGB and flipped afterwards must equal cutting the BGR photo, as the authors do.
    from vision.antispoof import liveness_crops

    photo = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    found = Detections(np.array([[10, 12, 90, 110], [150, 40, 260, 200], [0, 0, 319, 239]], np.float32),
                       np.full(3, 0.9, np.float32), np.zeros((3, 5, 2), np.float32))
    backend = AntispoofBackend()
    run(backend, [photo], [found])
    expected = liveness_crops(np.ascontiguousarray(photo[..., ::-1]), found.boxes, (2.7, 4.0)).transpose(1, 0, 2, 3, 4)
    np.testing.assert_array_equal(backend.batches[0], expected)

"""video.decode: probing, sampling, rotation and truncation on clips written in the test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from errors import InvalidVideo, VideoTooLarge
from video.decode import FrameReader, probe, sampled_indices, sampling_step
from video_clips import Shown, rotate_mp4, write_clip

LIMITS = {"max_pixels": 40_000_000, "max_seconds": 600}


def square(side: int = 120, value: int = 255) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


@pytest.mark.parametrize(
    ("frames", "fps", "sample_fps", "expected"),
    [
        (13, 30, 5, [0, 6, 12]),  # one frame in six
        (5, 10, 5, [0, 2, 4]),
        (4, 3, 5, [0, 1, 2, 3]),  # a source slower than the sampling rate: every frame
        (10, 25, 10, [0, 3, 5, 8]),  # 2.5 frames per sample: the first frame at or after each 0.1 s
        (7, 29.97, 29.97, [0, 1, 2, 3, 4, 5, 6]),  # no frame lost to rounding
    ],
)
def test_sampling_takes_the_first_frame_at_or_after_each_sample_time(frames, fps, sample_fps, expected) -> None:
    assert sampled_indices(frames, fps, sample_fps) == expected


@pytest.mark.parametrize(("fps", "sample_fps", "step"), [(30, 5, 0.2), (3, 5, 1 / 3), (10, 10, 0.1)])
def test_the_sampling_step_is_the_slower_of_the_two_rates(fps, sample_fps, step) -> None:
    assert sampling_step(fps, sample_fps) == pytest.approx(step)


@pytest.mark.parametrize("suffix", [".avi", ".mp4", ".webm"])
def test_each_container_is_probed_and_read_at_the_sampling_rate(tmp_path: Path, suffix: str) -> None:
    clip = write_clip(tmp_path / f"clip{suffix}", [Shown(square(), 0, 2)], seconds=2, fps=10, size=(320, 240))
    info = probe(clip, **LIMITS)
    assert (info.width, info.height, info.fps, info.rotation) == (320, 240, 10, 0)
    assert info.frame_count == 20
    reader = FrameReader(clip, info, sample_fps=5, max_seconds=600)
    frames = [f for batch in iter(lambda: reader.read(4), []) for f in batch]
    assert [f.index for f in frames] == list(range(0, 20, 2))
    assert [f.time_s for f in frames] == pytest.approx([i / 10 for i in range(0, 20, 2)])
    assert frames[0].pixels.shape == (240, 320, 3) and reader.frames_read == 20
    assert not reader.truncated and reader.warnings() == []


def test_the_containers_rotation_is_applied(tmp_path: Path) -> None:
    """A clip stored landscape with a white band on its left, whose header says turn 90 degrees clockwise."""
    band = np.zeros((240, 320, 3), np.uint8)
    band[:, :40] = 255
    clip = write_clip(tmp_path / "clip.mp4", [Shown(band, 0, 1, x0=0, x1=0, y=0)], seconds=1, size=(320, 240))
    rotated = rotate_mp4(clip, tmp_path / "portrait.mp4", 90)
    info = probe(rotated, **LIMITS)
    assert (info.width, info.height, info.rotation) == (240, 320, 90)
    [frame, *_] = FrameReader(rotated, info, 5, 600).read(1)
    assert frame.pixels.shape == (320, 240, 3)
    assert frame.pixels[:20].mean() > 200 and frame.pixels[-20:].mean() < 60  # the band is now on top


def test_a_text_file_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("minutes of the meeting\n" * 200)
    with pytest.raises(InvalidVideo, match="not a video"):
        probe(path, **LIMITS)


def test_an_mp4_cut_before_its_index_is_refused(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.mp4", [Shown(square(), 0, 2)], seconds=2)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(InvalidVideo):
        probe(cut, **LIMITS)


def test_an_avi_cut_short_is_read_to_where_it_ends_and_says_so(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", [Shown(square(), 0, 4)], seconds=4, fps=10, size=(320, 240))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    info = probe(cut, **LIMITS)
    assert info.frame_count == 40  # the header still says the whole length
    reader = FrameReader(cut, info, 5, 600)
    while reader.read(8):
        pass
    assert 0 < reader.frames_read < 30 and reader.truncated
    [warning] = reader.warnings()
    assert "truncated" in warning


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_pixels": 320 * 240 - 1, "max_seconds": 600}, "pixels"),
        ({"max_pixels": 40_000_000, "max_seconds": 1.5}, "MAX_VIDEO_SECONDS"),
    ],
)
def test_a_video_above_a_limit_is_refused_naming_it(tmp_path: Path, limits: dict, message: str) -> None:
    clip = write_clip(tmp_path / "clip.avi", [], seconds=2, size=(320, 240))
    with pytest.raises(VideoTooLarge, match=message):
        probe(clip, **limits)


def test_probing_leaves_the_clip_readable_by_opencv(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip.avi", [], seconds=1)
    probe(clip, **LIMITS)
    assert cv2.VideoCapture(str(clip)).read()[0]


def test_frames_too_small_to_hold_a_face_are_refused(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "tiny.avi", [], seconds=1, size=(8, 8))
    with pytest.raises(InvalidVideo, match="at least 16 pixels"):
        probe(clip, **LIMITS)

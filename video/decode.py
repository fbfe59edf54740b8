"""Open, probe and sample a video file with OpenCV (its wheel's FFmpeg): what `POST /videos` checks and jobs read.

`probe` opens the file and decodes its first frame, so a file that is not a video, or one cut
off before a decodable frame (an MP4 whose index was never written), is refused at upload and
never becomes a failed job. The container's rotation (a phone's portrait clip) is applied by
OpenCV (`CAP_PROP_ORIENTATION_AUTO`, off by default in the wheel), so frames, boxes and sizes are
in the orientation the video is shown in.

`FrameReader` reads every frame (`grab`, which decodes) and converts only the sampled ones to
RGB. Sample times are k / sample_fps; each is given the first frame at or after it, and frame
times are index / fps (the container's nominal rate), so a 30 fps clip sampled at 5 fps takes
frames 0, 6, 12, ...; a source slower than `sample_fps` gives every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from errors import InvalidVideo, VideoTooLarge
from imaging.decode import MIN_FACE_IMAGE_SIDE

MAX_FPS = 1000.0  # a container claiming more is broken (or not a video)
# A frame count the container states may be an estimate (WebM: duration x fps); the reader calls a
# video cut short only when it ends more than this many frames, or this share, before it.
TRUNCATION_SLACK_FRAMES = 2
TRUNCATION_SLACK_SHARE = 0.02
TIME_EPSILON = 1e-6  # frame times are index / fps: rounding must not skip a frame exactly on a sample time

NOT_A_VIDEO = "the uploaded file is not a video OpenCV can read (MP4/H.264, AVI/MJPEG, WebM/VP8/VP9, ...)"


@dataclass(frozen=True)
class VideoInfo:
    """What the container says, with the frame size as decoded (rotation applied)."""

    width: int
    height: int
    fps: float
    frame_count: int | None  # None when the container does not say
    rotation: int  # degrees clockwise the stored frames are turned to be shown (0, 90, 180, 270)

    @property
    def duration_s(self) -> float | None:
        return self.frame_count / self.fps if self.frame_count else None


@dataclass(frozen=True)
class Frame:
    index: int  # in the source, from 0
    time_s: float  # index / fps
    pixels: np.ndarray  # (H, W, 3) uint8 RGB


def open_capture(path: Path) -> cv2.VideoCapture:
    """An FFmpeg capture of `path` that applies the container's rotation (InvalidVideo when it cannot be opened)."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise InvalidVideo(NOT_A_VIDEO)
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return capture


def probe(path: Path, *, max_pixels: int, max_seconds: float) -> VideoInfo:
    """Open the video and decode its first frame; its size, rate, length and rotation.

    Raises InvalidVideo (not a video, no decodable frame, no usable frame rate, frames too small
    to hold a face) or VideoTooLarge
    (a frame above `max_pixels`, longer than `max_seconds` by its container's frame count).
    """
    capture = open_capture(path)
    try:
        ok, first = capture.read()
        if not ok or first is None:
            raise InvalidVideo("the video has no decodable frame: the file is truncated or damaged")
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        rotation = int(round(capture.get(cv2.CAP_PROP_ORIENTATION_META))) % 360
    finally:
        capture.release()
    if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise InvalidVideo(f"the video states no usable frame rate ({fps:g} frames per second)")
    height, width = first.shape[:2]
    if min(width, height) < MIN_FACE_IMAGE_SIDE:
        raise InvalidVideo(
            f"video frames are {width}x{height}: each side must be at least {MIN_FACE_IMAGE_SIDE} pixels to hold a face"
        )
    if width * height > max_pixels:
        raise VideoTooLarge(
            f"video frames are {width}x{height} = {width * height} pixels; the limit is {max_pixels} (MAX_IMAGE_PIXELS)"
        )
    info = VideoInfo(width, height, fps, count if count > 0 else None, rotation)
    if info.duration_s is not None and info.duration_s > max_seconds:
        raise VideoTooLarge(
            f"the video lasts {info.duration_s:.1f} s; the limit is {max_seconds:g} s (MAX_VIDEO_SECONDS)"
        )
    return info


def sampling_step(fps: float, sample_fps: float) -> float:
    """Seconds between sampled frames: 1 / sample_fps, or one frame when the source is slower."""
    return 1.0 / min(sample_fps, fps)


def sampled_indices(frame_count: int, fps: float, sample_fps: float) -> list[int]:
    """The frame indices `FrameReader` samples from a video of `frame_count` frames (for tests and plans)."""
    sampler = Sampler(fps, sample_fps)
    return [i for i in range(frame_count) if sampler.take(i)]


@dataclass
class Sampler:
    """Decides, frame by frame in order, which frames are sampled: the first at or after each k / sample_fps."""

    fps: float
    sample_fps: float
    next_k: int = 0  # the next sample time is next_k x step (an integer, so no rounding accumulates)

    def take(self, index: int) -> bool:
        step = sampling_step(self.fps, self.sample_fps)
        time_s = index / self.fps
        if time_s + TIME_EPSILON < self.next_k * step:
            return False
        self.next_k = math.floor((time_s + TIME_EPSILON) / step) + 1
        return True


@dataclass
class FrameReader:
    """Reads a probed video in order, giving the sampled frames in batches; counts every frame read.

    Not thread-safe: one job reads it from one worker thread at a time.
    """

    path: Path
    info: VideoInfo
    sample_fps: float
    max_seconds: float
    frames_read: int = 0
    frames_sampled: int = 0
    ended: bool = False
    stopped_at_limit: bool = False  # a container without a frame count ran past MAX_VIDEO_SECONDS
    _capture: cv2.VideoCapture | None = field(default=None, repr=False)
    _sampler: Sampler | None = field(default=None, repr=False)

    def read(self, count: int) -> list[Frame]:
        """Up to `count` sampled frames (fewer at the end; [] once it has ended)."""
        if self.ended:
            return []
        if self._capture is None:
            self._capture = open_capture(self.path)
            self._sampler = Sampler(self.info.fps, self.sample_fps)
        frames: list[Frame] = []
        while len(frames) < count:
            index = self.frames_read
            time_s = index / self.info.fps
            if time_s > self.max_seconds:
                self.stopped_at_limit = True
                self.close()
                break
            if not self._capture.grab():
                self.close()
                break
            self.frames_read += 1
            if not self._sampler.take(index):
                continue
            ok, bgr = self._capture.retrieve()
            if not ok or bgr is None:  # a frame that decodes but cannot be converted: the file is damaged here
                self.close()
                break
            self.frames_sampled += 1
            frames.append(Frame(index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        return frames

    @property
    def truncated(self) -> bool:
        """Whether the video ended well before the frame count its container states."""
        expected = self.info.frame_count
        if not self.ended or self.stopped_at_limit or not expected:
            return False
        slack = max(TRUNCATION_SLACK_FRAMES, TRUNCATION_SLACK_SHARE * expected)
        return self.frames_read + slack < expected

    def warnings(self) -> list[str]:
        """What the result should say about how far the video could be read."""
        notes = []
        if self.truncated:
            read_s, stated_s = self.frames_read / self.info.fps, self.info.duration_s or 0.0
            notes.append(
                f"the video ended at {read_s:.2f} s of the {stated_s:.2f} s its container states: "
                "the file is truncated or damaged, and the rest was not analysed"
            )
        if self.stopped_at_limit:
            limit = f"{self.max_seconds:g} s (MAX_VIDEO_SECONDS)"
            notes.append(f"reading stopped at {limit}: the container states no length")
        return notes

    def close(self) -> None:
        self.ended = True
        if self._capture is not None:
            self._capture.release()
            self._capture = None

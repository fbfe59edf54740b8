"""The annotated copy of a video: its sampled frames with every track's box and name drawn, as an MP4.

Names are only known once every track is identified (from the track's whole embedding), so the
copy is drawn in a second pass over the source after the analysis, from the boxes the tracks kept.
It is written with `cv2.VideoWriter` as MPEG-4 Part 2 (`mp4v`): the opencv wheel's FFmpeg has no
H.264 encoder, so browsers may not play it inline; VLC, ffplay, mpv and OpenCV do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from imaging.draw import Colour, draw_faces
from video.decode import FrameReader, VideoInfo, sampling_step

FOURCC = "mp4v"
MEDIA_TYPE = "video/mp4"
BATCH_FRAMES = 16  # frames read per call: cancellation and progress are checked between calls


@dataclass(frozen=True)
class Mark:
    """One box to draw on one frame."""

    box: np.ndarray  # (4,) x1, y1, x2, y2
    label: str
    colour: Colour  # RGB


@dataclass(frozen=True)
class _Faces:
    """What `draw_faces` draws: boxes and labels, no landmarks (the tracks keep boxes only)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def draw_marks(frame: np.ndarray, marks: Sequence[Mark]) -> np.ndarray:
    """A copy of one (H, W, 3) RGB frame with the marks drawn."""
    if not marks:
        return frame
    faces = _Faces(
        np.stack([m.box for m in marks]).astype(np.float32),
        np.ones(len(marks), np.float32),
        np.zeros((len(marks), 0, 2), np.float32),
    )
    return draw_faces(frame, faces, [m.label for m in marks], [m.colour for m in marks])


def write_annotated(
    source: Path,
    info: VideoInfo,
    sample_fps: float,
    max_seconds: float,
    target: Path,
    marks: Mapping[int, Sequence[Mark]],
    keep_going: Callable[[], bool] = lambda: True,
) -> int:
    """Write the sampled frames of `source` with `marks` (by source frame index) drawn to `target`.

    The copy plays at the sampling rate, so it lasts as long as the source. Stops early (and
    returns what it wrote) when `keep_going()` turns False. Returns the number of frames written.
    """
    fps = 1.0 / sampling_step(info.fps, sample_fps)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*FOURCC), fps, (info.width, info.height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV could not open a {FOURCC} writer for {target}")
    reader = FrameReader(source, info, sample_fps, max_seconds)
    written = 0
    try:
        while keep_going() and (frames := reader.read(BATCH_FRAMES)):
            for frame in frames:
                drawn = draw_marks(frame.pixels, marks.get(frame.index, ()))
                if drawn.shape[:2] != (info.height, info.width):  # the writer drops frames of another size
                    drawn = cv2.resize(drawn, (info.width, info.height))
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                written += 1
    finally:
        reader.close()
        writer.release()
    return written

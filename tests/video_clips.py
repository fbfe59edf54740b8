"""Test clips written with cv2.VideoWriter: photos shown in sequence and moved across a plain background."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

BACKGROUND = 90  # grey
FOURCCS = {".avi": "MJPG", ".mp4": "mp4v", ".webm": "VP80"}


@dataclass(frozen=True)
class Shown:
    """A photo (BGR) on screen from `start_s` to `end_s` (exclusive), moving from x0 to x1 along the frame."""

    photo: np.ndarray
    start_s: float
    end_s: float
    x0: int = 20
    x1: int = 20
    y: int = 40


def write_clip(
    path: Path, shown: Sequence[Shown], seconds: float, fps: float = 10.0, size: tuple[int, int] = (640, 360)
) -> Path:
    """Write `seconds` of video at `fps` (codec by suffix: MJPEG .avi, MPEG-4 .mp4, VP8 .webm)."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCCS[path.suffix]), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    for index in range(int(round(seconds * fps))):
        time_s = index / fps
        frame = np.full((height, width, 3), BACKGROUND, np.uint8)
        for item in shown:
            if item.start_s <= time_s < item.end_s:
                share = (time_s - item.start_s) / max(item.end_s - item.start_s, 1e-9)
                x = int(round(item.x0 + share * (item.x1 - item.x0)))
                h, w = item.photo.shape[:2]
                frame[item.y : item.y + h, x : x + w] = item.photo
        writer.write(frame)
    writer.release()
    return path


def rotate_mp4(source: Path, target: Path, degrees: int = 90) -> Path:
    """A copy of an MP4 whose track header says: turn the frames `degrees` clockwise to show them.

    The tkhd box's display matrix is what phones write for a portrait clip (FFmpeg reads it as
    the stream's display matrix); cv2.VideoWriter cannot set it, so it is patched in place.
    """
    data = bytearray(source.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    matrix_at = at + 4 + 4 + (20 if version == 0 else 32) + 8 + 8  # flags, times, id, duration, reserved, layer..
    one, cos, sin = 1 << 16, {0: 1, 90: 0, 180: -1, 270: 0}[degrees], {0: 0, 90: 1, 180: 0, 270: -1}[degrees]
    data[matrix_at : matrix_at + 36] = struct.pack(
        ">9i", cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30
    )
    target.write_bytes(bytes(data))
    return target

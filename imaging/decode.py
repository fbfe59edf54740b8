"""Decode untrusted uploads into RGB pixel arrays, once, with limits checked first.

Pillow reads the header (format, size) without decoding pixels, so a
30000x30000 PNG of a few hundred KB is refused before it can take gigabytes.
EXIF orientation is applied; greyscale, palette, RGBA (composited on white),
CMYK and 16-bit images all come out as (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from errors import ImageTooLarge, InvalidImage

# MPO is how Pillow names many phone-camera JPEGs (a JPEG with an embedded preview).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
SINGLE_FRAME_EXEMPT = frozenset({"MPO"})  # its extra frames are previews, not animation
WHITE = (255, 255, 255)
# Uploads for face work must be able to hold a face. Below 16 pixels a face is a smudge that
# gives no usable embedding (the recognizer's crops are 112 pixels). Past 20:1 the short side
# of a photo letterboxed onto the 640 detector canvas is under 32 pixels (SCRFD's largest
# stride): a 1x100000 strip would decode and then never show a face.
MIN_FACE_IMAGE_SIDE = 16
MAX_ASPECT_RATIO = 20.0


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any Pillow mode."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: Pillow's convert("L") clips at 255, so scale explicitly.
        values = np.asarray(image).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(values * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        values = np.asarray(image)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels often hold black or garbage colour; show them as a white page would.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def decode_image(
    data: bytes, *, max_pixels: int, min_side: int = 1, max_aspect_ratio: float | None = None
) -> np.ndarray:
    """Decode an uploaded file.

    Args:
        data: the file's bytes.
        max_pixels: refuse images with more than this many pixels (from the header).
        min_side: refuse images with a side shorter than this (from the header).
        max_aspect_ratio: refuse images whose long side is more than this many times the short one.

    Returns:
        (H, W, 3) uint8 RGB array, EXIF orientation applied.

    Raises:
        InvalidImage: empty, unknown, unsupported, animated, truncated or corrupt file, or a
            side below `min_side` or a ratio above `max_aspect_ratio`.
        ImageTooLarge: more than `max_pixels` pixels.
    """
    if not data:
        raise InvalidImage("the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        # Pillow's own guard (above ~179 Mpx) fires while reading the header.
        raise ImageTooLarge(f"image has more pixels than the limit of {max_pixels}") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InvalidImage("the uploaded file is not a decodable image") from error
    fmt = image.format or "unknown"
    if fmt not in ALLOWED_FORMATS:
        raise InvalidImage(f"unsupported image format {fmt}: send JPEG, PNG, WebP, BMP, TIFF or GIF")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if min(width, height) < min_side:
        raise InvalidImage(f"image is {width}x{height}: each side must be at least {min_side} pixels to hold a face")
    if max_aspect_ratio is not None and max(width, height) > max_aspect_ratio * min(width, height):
        raise InvalidImage(
            f"image is {width}x{height}: sides more than {max_aspect_ratio:g} times apart are not supported "
            "(faces would shrink below what the detector can find)"
        )
    if getattr(image, "n_frames", 1) > 1 and fmt not in SINGLE_FRAME_EXEMPT:
        raise InvalidImage(f"animated or multi-frame {fmt} images are not supported: send a single frame")
    if fmt in ("JPEG", "MPO") and image.mode in ("RGB", "L"):
        pixels = _decode_jpeg(data, (width, height))
        if pixels is not None:
            return pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
            image.load()
            image = _apply_exif_orientation(image)
            return np.ascontiguousarray(_to_rgb_array(image))
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise InvalidImage(f"the {fmt} image is truncated or corrupt") from error


def _decode_jpeg(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """(H, W, 3) RGB of an RGB or greyscale JPEG straight into numpy, EXIF orientation applied.

    OpenCV's libjpeg-turbo decode gives the same pixels as Pillow's without Pillow's two
    full-image copies (exif_transpose, then tobytes for numpy): about 1.5 ms less per 1000 px
    photo. None (use Pillow, which names the error) when OpenCV cannot decode the file whole.
    """
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if pixels is None or sorted(pixels.shape[:2]) != sorted(size):
        return None
    return pixels


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not reject an otherwise fine photo
        return image


class Upload(Protocol):
    """What we need of an uploaded file (FastAPI's UploadFile fits)."""

    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def read_upload(upload: Upload, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    """Read at most `max_bytes` + 1 bytes of an upload and decode it off the event loop.

    Raises ImageTooLarge above `max_bytes` (without reading the rest), else as decode_image
    with the geometry a face needs (MIN_FACE_IMAGE_SIDE, MAX_ASPECT_RATIO).
    """
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{upload.filename or 'the upload'} is larger than {max_bytes} bytes")
    return await asyncio.to_thread(
        decode_image,
        data,
        max_pixels=max_pixels,
        min_side=MIN_FACE_IMAGE_SIDE,
        max_aspect_ratio=MAX_ASPECT_RATIO,
    )


async def read_each(
    uploads: Sequence[Upload], *, max_bytes: int, max_pixels: int
) -> list[np.ndarray | InvalidImage | ImageTooLarge]:
    """Every upload read and decoded as `read_upload` does (concurrently), in order; an upload that
    cannot be used gives its error in its place instead of failing the others."""

    async def one(upload: Upload) -> np.ndarray | InvalidImage | ImageTooLarge:
        try:
            return await read_upload(upload, max_bytes=max_bytes, max_pixels=max_pixels)
        except (InvalidImage, ImageTooLarge) as error:
            return error

    return list(await asyncio.gather(*(one(upload) for upload in uploads)))

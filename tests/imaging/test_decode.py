"""Unit tests of upload decoding (imaging.py): formats, modes, EXIF, limits, bad files."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import png_header_only
from errors import ImageTooLarge, InvalidImage
from imaging.decode import decode_image

LIMIT = 40_000_000


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def marked_rgb(width: int = 60, height: int = 40) -> Image.Image:
    """Grey image with a red block in the top-left corner (to follow rotations)."""
    array = np.full((height, width, 3), 128, np.uint8)
    array[:10, :10] = (255, 0, 0)
    return Image.fromarray(array)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("JPEG", {"quality": 95}), ("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {}), ("GIF", {})],
)
def test_decode_image_accepts_common_formats_as_rgb(fmt: str, options: dict) -> None:
    decoded = decode_image(encode(marked_rgb(), fmt, **options), max_pixels=LIMIT)
    assert decoded.shape == (40, 60, 3) and decoded.dtype == np.uint8
    assert decoded[2, 2, 0] > 200 and decoded[2, 2, 2] < 60  # red stays red: RGB order
    assert abs(int(decoded[30, 50, 1]) - 128) < 10


def test_decode_image_expands_greyscale_to_three_channels() -> None:
    decoded = decode_image(encode(Image.new("L", (5, 4), 77), "PNG"), max_pixels=LIMIT)
    assert decoded.shape == (4, 5, 3) and (decoded == 77).all()


def test_decode_image_composites_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    decoded = decode_image(encode(rgba, "PNG"), max_pixels=LIMIT)
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[3, 3].tolist() == [255, 255, 255]


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_image_scales_16_bit_pngs_to_8_bit(channels: int) -> None:
    shape = (6, 8) if channels == 1 else (6, 8, 3)
    array = np.full(shape, 40000, np.uint16)
    ok, png = cv2.imencode(".png", array)
    assert ok
    decoded = decode_image(png.tobytes(), max_pixels=LIMIT)
    assert decoded.shape == (6, 8, 3)
    assert np.all(np.abs(decoded.astype(int) - round(40000 / 257)) <= 1)


def test_decode_image_converts_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    decoded = decode_image(encode(cmyk, "JPEG"), max_pixels=LIMIT)
    assert decoded.shape == (8, 8, 3) and decoded[4, 4, 0] > 200 and decoded[4, 4, 1] < 60


@pytest.mark.parametrize(
    ("orientation", "shape", "red_corner"),
    [
        (1, (40, 60), (0, 0)),  # as stored
        (3, (40, 60), (39, 59)),  # rotated 180
        (6, (60, 40), (0, 39)),  # rotate 90 clockwise to display: top-left goes top-right
        (8, (60, 40), (59, 0)),  # rotate 90 counter-clockwise: top-left goes bottom-left
    ],
)
def test_decode_image_applies_exif_orientation(orientation: int, shape, red_corner) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(marked_rgb(), "JPEG", quality=95, exif=exif), max_pixels=LIMIT)
    assert decoded.shape[:2] == shape
    y, x = red_corner
    assert decoded[y, x, 0] > 200 and decoded[y, x, 1] < 60


def test_decode_image_refuses_too_many_pixels_before_decoding() -> None:
    with pytest.raises(ImageTooLarge, match="12000x12000"):
        decode_image(png_header_only(12000, 12000), max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge, match="limit"):
        decode_image(png_header_only(30000, 30000), max_pixels=LIMIT)


def test_decode_image_refuses_pillows_own_decompression_bomb_limit() -> None:
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(png_header_only(100_000, 100_000), max_pixels=10**12)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a decodable image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not a decodable image"),
    ],
)
def test_decode_image_rejects_non_images(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, max_pixels=LIMIT)


def test_decode_image_rejects_a_truncated_jpeg() -> None:
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)), "JPEG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_decode_image_rejects_unsupported_formats() -> None:
    with pytest.raises(InvalidImage, match="unsupported image format ICO"):
        decode_image(encode(marked_rgb(32, 32), "ICO"), max_pixels=LIMIT)


def test_decode_image_rejects_animations() -> None:
    frames = [marked_rgb(), Image.new("RGB", (60, 40), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidImage, match="animated"):
        decode_image(data, max_pixels=LIMIT)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_decode_image_gives_pillows_pixels_for_jpeg(mode: str) -> None:
    # JPEGs take OpenCV's decoder (fewer copies); the pixels must be exactly Pillow's.
    rng = np.random.default_rng(5)
    noise = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).convert(mode)
    data = encode(noise, "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data, max_pixels=LIMIT), expected)

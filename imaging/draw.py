"""Draw detection and identification results onto a photo, and encode it (pure OpenCV/numpy).

The API decodes uploads to RGB (`imaging.decode`) and OpenCV draws a colour tuple in
the array's own channel order, so colours here are RGB and the image is reversed
to OpenCV's BGR only when encoding. Pass `channel_order="BGR"` for a BGR array.
Labels are drawn with OpenCV's Hershey font, which has ASCII glyphs only: accents
are dropped ("José" -> "Jose") and any other character becomes "?".
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Sequence
from typing import Literal, Protocol

import cv2
import numpy as np

ChannelOrder = Literal["RGB", "BGR"]
Colour = tuple[int, int, int]

JPEG_MEDIA_TYPE = "image/jpeg"
PNG_MEDIA_TYPE = "image/png"
JPEG_QUALITY = 90

# RGB. Boxes: one colour for plain detections, others for named and unknown faces.
BOX_COLOUR: Colour = (0, 200, 80)
KNOWN_COLOUR: Colour = (0, 200, 80)
UNKNOWN_COLOUR: Colour = (235, 60, 40)
TEXT_COLOUR: Colour = (255, 255, 255)
# Left eye, right eye, nose tip, left and right mouth corners (the detector's order).
LANDMARK_COLOURS: tuple[Colour, ...] = ((255, 40, 40), (40, 120, 255), (40, 220, 40), (255, 0, 255), (255, 220, 0))
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Line width, dot radius and text size grow with the photo so they stay visible on
# large photos and do not cover small ones: one unit per REFERENCE_SIDE pixels of the short side.
REFERENCE_SIDE = 400
TEXT_SCALE_PER_UNIT = 0.5
LABEL_PADDING = 3


class FaceMarks(Protocol):
    """What is drawn (pipeline.Detections fits): boxes (N, 4) x1 y1 x2 y2, scores (N,), landmarks (N, 5, 2)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


def ascii_label(text: str) -> str:
    """`text` in the characters the Hershey font can draw."""
    decomposed = unicodedata.normalize("NFKD", text)
    without_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    return "".join(c if " " <= c <= "~" else "?" for c in without_accents)


def _in_order(colour: Colour, channel_order: ChannelOrder) -> Colour:
    return colour if channel_order == "RGB" else (colour[2], colour[1], colour[0])


def draw_faces(
    image: np.ndarray,
    faces: FaceMarks,
    labels: Sequence[str] | None = None,
    colours: Sequence[Colour] | None = None,
    channel_order: ChannelOrder = "RGB",
) -> np.ndarray:
    """A copy of `image` with each face's box, five landmarks and label drawn.

    Args:
        image: (H, W, 3) uint8 in `channel_order`; it is not modified.
        faces: N faces in image pixel coordinates.
        labels: one text per face; default: the detector score ("0.87").
        colours: one RGB box colour per face; default: `BOX_COLOUR`.
        channel_order: the channel order of `image`.

    Returns:
        (H, W, 3) uint8, the same size and channel order as `image`.
    """
    count = int(faces.scores.shape[0])
    if labels is None:
        labels = [f"{float(score):.2f}" for score in faces.scores]
    if colours is None:
        colours = [BOX_COLOUR] * count
    if len(labels) != count or len(colours) != count:
        raise ValueError(f"{count} faces but {len(labels)} labels and {len(colours)} colours")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    unit = max(1, round(min(canvas.shape[:2]) / REFERENCE_SIDE))
    text_colour = _in_order(TEXT_COLOUR, channel_order)
    for box, points, label, colour in zip(faces.boxes, faces.landmarks, labels, colours, strict=True):
        colour = _in_order(colour, channel_order)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2 * unit, cv2.LINE_AA)
        for (x, y), dot in zip(points, LANDMARK_COLOURS, strict=False):
            cv2.circle(canvas, (int(round(float(x))), int(round(float(y)))), 2 * unit, _in_order(dot, channel_order),
                       -1, cv2.LINE_AA)
        _draw_label(canvas, ascii_label(label), (x1, y1), colour, text_colour, unit)
    return canvas


def _draw_label(canvas: np.ndarray, text: str, corner: tuple[int, int], fill: Colour, ink: Colour, unit: int) -> None:
    """`text` on a filled tag above the box's top-left corner (inside the box when there is no room above)."""
    if not text:
        return
    scale = TEXT_SCALE_PER_UNIT * unit
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, unit)
    tag_h = height + baseline + 2 * LABEL_PADDING
    x = min(max(corner[0], 0), max(canvas.shape[1] - width - 2 * LABEL_PADDING, 0))
    top = corner[1] - tag_h if corner[1] - tag_h >= 0 else max(corner[1], 0)
    cv2.rectangle(canvas, (x, top), (x + width + 2 * LABEL_PADDING, top + tag_h), fill, -1)
    cv2.putText(canvas, text, (x + LABEL_PADDING, top + LABEL_PADDING + height), FONT, scale, ink, unit, cv2.LINE_AA)


def _encode(extension: str, image: np.ndarray, channel_order: ChannelOrder, params: Sequence[int] = ()) -> bytes:
    bgr = image[:, :, ::-1] if channel_order == "RGB" else image
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(bgr), list(params))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {extension}")
    return encoded.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY, channel_order: ChannelOrder = "RGB") -> bytes:
    """(H, W, 3) uint8 in `channel_order` -> JPEG file bytes."""
    return _encode(".jpg", image, channel_order, (cv2.IMWRITE_JPEG_QUALITY, quality))


def encode_png(image: np.ndarray, channel_order: ChannelOrder = "RGB") -> bytes:
    """(H, W, 3) uint8 in `channel_order` -> PNG bytes (lossless: an aligned crop is shown as the model sees it)."""
    return _encode(".png", image, channel_order)


def annotated_jpeg(
    image: np.ndarray,
    faces: FaceMarks,
    labels: Sequence[str] | None = None,
    colours: Sequence[Colour] | None = None,
) -> bytes:
    """`draw_faces` on an RGB image, encoded as JPEG (one call for a worker thread)."""
    return encode_jpeg(draw_faces(image, faces, labels, colours))


def data_url(content: bytes, media_type: str) -> str:
    """`content` as a `data:<media_type>;base64,...` URL: usable as an <img src> as it is."""
    return f"data:{media_type};base64," + base64.b64encode(content).decode("ascii")

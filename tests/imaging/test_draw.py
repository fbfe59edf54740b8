"""Drawn results: `annotate.draw_faces` on synthetic images, and the annotate / include_aligned flags over HTTP."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import photo
from imaging.decode import decode_image
from imaging.draw import BOX_COLOUR, LANDMARK_COLOURS, UNKNOWN_COLOUR, ascii_label, draw_faces, encode_jpeg, encode_png
from vision.detections import Detections

GREY = 128
HEIGHT, WIDTH = 240, 320
BOX = (60.0, 50.0, 200.0, 210.0)
LANDMARKS = ((100.0, 110.0), (160.0, 110.0), (130.0, 140.0), (105.0, 175.0), (155.0, 175.0))
# JPEG (lossy, chroma at half resolution) moves a drawn colour by a few tens at most.
JPEG_COLOUR_TOLERANCE = 40
DATA_URL_PREFIX = "data:image/png;base64,"


def grey_image() -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), GREY, np.uint8)


def one_face() -> Detections:
    return Detections(
        np.array([BOX], np.float32), np.array([0.87], np.float32), np.array([LANDMARKS], np.float32)
    )


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tolerance))


# --------------------------------------------------------------------------- draw_faces
def test_drawing_keeps_shape_and_dtype_and_leaves_the_input_alone() -> None:
    image = grey_image()
    drawn = draw_faces(image, one_face())
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.all(image == GREY), "the caller's array must not be drawn on"
    assert np.any(drawn != GREY)


def test_box_outline_and_landmarks_are_drawn_where_the_face_is() -> None:
    drawn = draw_faces(grey_image(), one_face())
    x1, y1, x2, y2 = (int(v) for v in BOX)
    middle_y, middle_x = (y1 + y2) // 2, (x1 + x2) // 2
    for y, x in ((middle_y, x1), (middle_y, x2), (y2, middle_x)):  # left, right and bottom edges
        assert close_to(drawn[y, x], BOX_COLOUR), f"no box line at ({x}, {y}): {drawn[y, x]}"
    for (x, y), colour in zip(LANDMARKS, LANDMARK_COLOURS, strict=True):
        assert close_to(drawn[int(y), int(x)], colour)
    # Inside the box away from the landmarks, and far outside it, the photo is untouched.
    assert close_to(drawn[y1 + 12, middle_x], (GREY,) * 3)
    assert np.all(drawn[:, x2 + 10 :] == GREY)


def test_the_label_is_drawn_on_a_tag_above_the_box() -> None:
    drawn = draw_faces(grey_image(), one_face(), labels=["Ada"])
    tag = drawn[: int(BOX[1]), int(BOX[0]) : int(BOX[2])]
    assert np.any(np.all(tag == BOX_COLOUR, axis=-1)), "no tag in the box colour above the box"
    assert np.any(np.all(tag >= 200, axis=-1)), "no white (anti-aliased) text on the tag"


def test_no_faces_leave_the_image_unchanged() -> None:
    image = grey_image()
    image[::7] = 30  # not uniform, so an accidental blur or shift would show
    assert np.array_equal(draw_faces(image, Detections.empty()), image)


def test_bgr_images_get_the_colours_in_bgr_order() -> None:
    drawn = draw_faces(grey_image(), one_face(), channel_order="BGR")
    x1, y1, _, y2 = (int(v) for v in BOX)
    assert close_to(drawn[(y1 + y2) // 2, x1], BOX_COLOUR[::-1])


def test_faces_at_and_beyond_the_image_border_are_drawn_without_error() -> None:
    faces = Detections(
        np.array([[-30, -20, 80, 60], [280, 200, 400, 300]], np.float32),
        np.array([0.9, 0.8], np.float32),
        np.full((2, 5, 2), -5.0, np.float32),
    )
    drawn = draw_faces(grey_image(), faces, labels=["top left", "bottom right"])
    assert drawn.shape == (HEIGHT, WIDTH, 3)
    assert np.any(drawn[:60, :80] != GREY) and np.any(drawn[200:, 280:] != GREY)


def test_one_label_and_colour_per_face_is_required() -> None:
    with pytest.raises(ValueError, match="1 faces but 2 labels"):
        draw_faces(grey_image(), one_face(), labels=["a", "b"])


def test_labels_are_reduced_to_what_the_font_can_draw() -> None:
    assert ascii_label("José Müller") == "Jose Muller"
    assert ascii_label("王 0.52") == "? 0.52"


def test_jpeg_encoding_keeps_rgb_colours_in_place() -> None:
    image = grey_image()
    image[:, : WIDTH // 2] = (220, 30, 30)  # red left half: a swapped channel order would turn it blue
    back = decode(encode_jpeg(image))
    assert back.shape == image.shape
    assert close_to(back[HEIGHT // 2, WIDTH // 4], (220, 30, 30), JPEG_COLOUR_TOLERANCE)


def test_png_encoding_is_lossless() -> None:
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    assert np.array_equal(decode(encode_png(image)), image)


# --------------------------------------------------------------------------- over HTTP
def plain_and_drawn(api: httpx.Client, path: str, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The photo as the API decodes it, the annotated JPEG answer, and the JSON answer."""
    data = photo(name).read_bytes()
    drawn = api.post(f"{path}?annotate=true", files={"image": (name, data)})
    assert drawn.status_code == 200, drawn.text
    assert drawn.headers["content-type"] == "image/jpeg"
    answer = api.post(path, files={"image": (name, data)})
    assert answer.headers["content-type"] == "application/json"
    return decode_image(data, max_pixels=10**8), decode(drawn.content), answer.json()


def left_edge_middle(face: dict) -> tuple[int, int]:
    x1, y1, _, y2 = face["bbox"]
    return int(round((y1 + y2) / 2)), int(round(x1))


@pytest.mark.integration
def test_detect_can_answer_with_the_photo_and_its_faces_drawn(api: httpx.Client) -> None:
    plain, drawn, answer = plain_and_drawn(api, "/detect", "t1.jpg")
    assert drawn.shape == plain.shape == (answer["height"], answer["width"], 3)
    assert len(answer["faces"]) == 6
    for face in answer["faces"]:
        y, x = left_edge_middle(face)
        assert close_to(drawn[y, x], BOX_COLOUR, JPEG_COLOUR_TOLERANCE), f"no box at {face['bbox']}: {drawn[y, x]}"
    # Away from the faces only JPEG re-encoding noise separates the answer from the photo.
    difference = np.abs(drawn.astype(int) - plain.astype(int))
    assert difference.max() > 100
    assert np.median(difference) <= 3


@pytest.mark.integration
def test_identify_can_answer_with_the_names_drawn(api: httpx.Client) -> None:
    plain, drawn, answer = plain_and_drawn(api, "/identify", "t1.jpg")
    assert drawn.shape == plain.shape
    assert answer["faces"] and all(face["identity"] is None for face in answer["faces"]), "the gallery is empty"
    for face in answer["faces"]:  # every face is unknown: drawn in the unknown colour
        y, x = left_edge_middle(face)
        assert close_to(drawn[y, x], UNKNOWN_COLOUR, JPEG_COLOUR_TOLERANCE), f"{face['bbox']}: {drawn[y, x]}"
    assert np.abs(drawn.astype(int) - plain.astype(int)).max() > 100


JPEG_DATA_URL_PREFIX = "data:image/jpeg;base64,"


@pytest.mark.integration
@pytest.mark.parametrize("path", ["/detect", "/identify"])
def test_include_annotated_gives_the_json_and_the_drawn_jpeg_in_one_answer(api: httpx.Client, path: str) -> None:
    data = photo("t1.jpg").read_bytes()
    both = api.post(f"{path}?include_annotated=true", files={"image": ("t1.jpg", data)})
    assert both.status_code == 200 and both.headers["content-type"] == "application/json"
    body = both.json()
    plain = api.post(path, files={"image": ("t1.jpg", data)}).json()
    assert "annotated" not in plain  # without the flag the answer is as before
    assert {k: v for k, v in body.items() if k != "annotated"} == plain
    assert body["annotated"].startswith(JPEG_DATA_URL_PREFIX)
    # the very JPEG that annotate=true answers with
    drawn = api.post(f"{path}?annotate=true", files={"image": ("t1.jpg", data)}).content
    assert base64.b64decode(body["annotated"].removeprefix(JPEG_DATA_URL_PREFIX)) == drawn


@pytest.mark.integration
def test_openapi_documents_the_jpeg_answers(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/detect", "/identify"):
        content = paths[path]["post"]["responses"]["200"]["content"]
        assert {"application/json", "image/jpeg"} <= set(content), path
        assert any(p["name"] == "annotate" and p["in"] == "query" for p in paths[path]["post"]["parameters"])


@pytest.mark.integration
def test_face_similarity_can_include_the_aligned_crops(api: httpx.Client) -> None:
    data = photo("Tom_Hanks_54745.png").read_bytes()
    files = {"image_a": ("a.png", data), "image_b": ("b.png", data)}
    body = api.post("/face-similarity?include_aligned=true", files=files).json()
    assert body["same_person"] and body["similarity"] > 0.99
    crops = []
    for key in ("aligned_a", "aligned_b"):
        assert body[key].startswith(DATA_URL_PREFIX)
        crops.append(decode(base64.b64decode(body[key].removeprefix(DATA_URL_PREFIX))))
    assert crops[0].shape == (112, 112, 3)
    assert np.array_equal(crops[0], crops[1]), "the same photo aligns to the same crop"
    assert crops[0].std() > 20, "the crop shows a face, not a blank canvas"
    plain = api.post("/face-similarity", files=files).json()
    assert "aligned_a" not in plain and "aligned_b" not in plain

"""Unit: reading a JSON body into the form a route takes (api/bodies.py), without a server."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

from api.bodies import BadBody, Kind, decode_base64, form_from_json, is_json

DATA = bytes(range(256)) * 3  # every byte value: '+', '/' and their URL-safe forms all occur
FIELDS = {"image": Kind.IMAGE, "images": Kind.IMAGES, "metadata": Kind.JSON_TEXT, "top_k": Kind.VALUE,
          "tags": Kind.VALUES}


def http_error(caught: pytest.ExceptionInfo[BadBody]) -> HTTPException:
    assert isinstance(caught.value.error, HTTPException)
    return caught.value.error


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(DATA).decode(),
        base64.encodebytes(DATA).decode(),  # a line break every 76 characters
        base64.urlsafe_b64encode(DATA).decode(),
        base64.b64encode(DATA).decode().rstrip("="),  # padding left out
        "data:image/jpeg;base64," + base64.b64encode(DATA).decode(),
        "DATA:image/png;charset=utf-8;Base64," + base64.b64encode(DATA).decode(),
    ],
)
def test_every_accepted_spelling_of_base64_gives_the_same_bytes(text: str) -> None:
    assert decode_base64(text, "image")[0] == DATA


def test_a_data_url_gives_its_media_type() -> None:
    assert decode_base64("data:image/png;base64,AAAA", "image") == (b"\0\0\0", "image/png")
    assert decode_base64("AAAA", "image")[1] == "application/octet-stream"


@pytest.mark.parametrize("text", ["not*base64!", "A", "AAAAA", "ÄÖÜ=", "AA=A", "data:image/png;base64,AA*A"])
def test_text_that_is_not_base64_is_a_400_naming_the_field(text: str) -> None:
    with pytest.raises(BadBody) as caught:
        decode_base64(text, "images[3]")
    error = http_error(caught)
    assert (error.status_code, error.detail) == (400, "images[3]: not valid base64")


@pytest.mark.parametrize("text", ["data:image/png,%89PNG", "data:image/png;base64"])
def test_a_data_url_that_is_not_base64_says_so(text: str) -> None:
    with pytest.raises(BadBody) as caught:
        decode_base64(text, "image_a")
    assert http_error(caught).detail == "image_a: not a base64 data URL (data:image/jpeg;base64,...)"


def test_each_member_becomes_the_form_field_of_its_kind() -> None:
    body = {
        "images": [base64.b64encode(b"one").decode(), 7, base64.b64encode(b"three").decode()],
        "metadata": {"team": "x"},
        "top_k": 3,
        "tags": ["a", "b"],
        "image": None,  # null: as if absent
        "unknown": "ignored",
    }
    form = form_from_json(json.dumps(body).encode(), FIELDS)
    images = form.getlist("images")
    assert isinstance(images[0], UploadFile) and images[0].filename == "images[0]"
    assert images[1] == 7  # passed on for the route's validation to refuse (422)
    assert images[2].file.read() == b"three" and images[2].size == 5
    assert form["metadata"] == '{"team": "x"}' and form["top_k"] == 3 and form.getlist("tags") == ["a", "b"]
    assert "image" not in form and "unknown" not in form


def test_a_single_string_for_a_list_of_images_is_one_image() -> None:
    form = form_from_json(json.dumps({"images": "AAAA"}).encode(), FIELDS)
    [image] = form.getlist("images")
    assert image.filename == "images[0]" and image.file.read() == b"\0\0\0"


@pytest.mark.parametrize(("body", "kind", "loc"), [(b'{"image": ', "json_invalid", ("body", 10)),
                                                   (b"[1, 2]", "dict_type", ("body",)),
                                                   (b'{"a": "\xff"}', "json_invalid", ("body", 7))])
def test_a_body_that_is_not_a_json_object_is_a_fastapi_style_422(body: bytes, kind: str, loc: tuple) -> None:
    with pytest.raises(BadBody) as caught:
        form_from_json(body, FIELDS)
    assert isinstance(caught.value.error, RequestValidationError)
    [error] = caught.value.error.errors()
    assert (error["type"], error["loc"]) == (kind, loc)


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("application/json", True), ("application/json; charset=utf-8", True), ("application/vnd.api+json", True),
     ("multipart/form-data; boundary=x", False), ("text/plain", False), (None, False), ("", False)],
)
def test_json_is_recognised_by_its_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json(content_type) is expected

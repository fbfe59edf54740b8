"""Integration: POST /embeddings, several photos in one request, on a real Triton with real photos."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import photo

pytestmark = pytest.mark.integration

MAX_BATCH_IMAGES = 32  # the default
# A face's embedding in a batch of N crops and alone (batch of 1) differ by ONNX Runtime's
# float rounding only: the model repository proves batches equal to single images to this.
EMBEDDING_TOLERANCE = 1e-4
BOX_TOLERANCE = 0.02  # pixels (answers are rounded to 0.01)


def blank_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, "JPEG")
    return buffer.getvalue()


def batch(api: httpx.Client, images: list[bytes]) -> httpx.Response:
    return api.post("/embeddings", files=[("images", (f"p{i}.jpg", data)) for i, data in enumerate(images)])


def alone(api: httpx.Client, data: bytes) -> dict:
    response = api.post("/embedding", files={"image": ("p.jpg", data)})
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_embedding(got: dict, expected: dict) -> None:
    assert set(got) == {"embedding", "face", "model"}
    np.testing.assert_allclose(got["embedding"], expected["embedding"], atol=EMBEDDING_TOLERANCE)
    np.testing.assert_allclose(got["face"]["bbox"], expected["face"]["bbox"], atol=BOX_TOLERANCE)
    np.testing.assert_allclose(got["face"]["landmarks"], expected["face"]["landmarks"], atol=BOX_TOLERANCE)


def recognizer_counts(triton) -> tuple[int, int]:
    stats = httpx.get(f"http://{triton.url}/v2/models/fr_model/stats").json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_a_batch_answers_every_image_in_order_as_embedding_does(api: httpx.Client, triton) -> None:
    names = ["yaoming.jpg", "t1.jpg", "gdp.jpg", "Tom_Hanks_54745.png", "yaoming.jpg"]
    images = [photo(name).read_bytes() for name in names]
    before = recognizer_counts(triton)
    response = batch(api, images)
    after = recognizer_counts(triton)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(images)
    assert (after[0] - before[0], after[1] - before[1]) == (len(images), 1)  # every main face in one call
    for got, data in zip(results, images, strict=True):
        assert_same_embedding(got, alone(api, data))
    assert results[0] == results[4]  # the same photo twice


def test_a_bad_image_gets_its_error_and_the_others_their_embeddings(api: httpx.Client) -> None:
    good = photo("yaoming.jpg").read_bytes()
    response = batch(api, [good, b"not an image", blank_jpeg(), photo("gdp.jpg").read_bytes(), b""])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[1] == {"error": {"status": 400, "detail": "the uploaded file is not a decodable image"}}
    assert results[2] == {"error": {"status": 422, "detail": "no face was detected in images[2]"}}
    assert results[4] == {"error": {"status": 400, "detail": "the uploaded file is empty"}}
    assert_same_embedding(results[0], alone(api, good))
    assert_same_embedding(results[3], alone(api, photo("gdp.jpg").read_bytes()))


def test_a_batch_of_bad_images_only_is_answered_image_by_image(api: httpx.Client) -> None:
    response = batch(api, [blank_jpeg(), b"junk"])
    assert response.status_code == 200
    assert [r["error"]["status"] for r in response.json()["results"]] == [422, 400]


def test_a_json_batch_answers_the_same_bytes_as_the_multipart_one(api: httpx.Client) -> None:
    images = [photo("yaoming.jpg").read_bytes(), b"junk", photo("t1.jpg").read_bytes()]
    form = batch(api, images)
    as_json = api.post("/embeddings", json={"images": [base64.b64encode(d).decode() for d in images]})
    assert form.status_code == as_json.status_code == 200
    assert as_json.content == form.content


def test_more_images_than_max_batch_images_is_413_and_none_is_embedded(api: httpx.Client, triton) -> None:
    small = photo("Tom_Hanks_54745.png").read_bytes()
    before = recognizer_counts(triton)
    response = batch(api, [small] * (MAX_BATCH_IMAGES + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": f"at most {MAX_BATCH_IMAGES} images per request (MAX_BATCH_IMAGES); "
                                         f"{MAX_BATCH_IMAGES + 1} were sent"}
    assert recognizer_counts(triton) == before
    assert batch(api, [small] * MAX_BATCH_IMAGES).status_code == 200


def test_a_batch_without_images_is_422(api: httpx.Client) -> None:
    for response in (api.post("/embeddings", files={"image": ("a.jpg", b"x")}), api.post("/embeddings", json={}),
                     api.post("/embeddings", json={"images": []})):
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "images"]


def test_bad_batches_leave_the_gallery_unchanged(api: httpx.Client) -> None:
    before = api.get("/identities", params={"limit": 1000}).json()
    assert batch(api, [b"junk", blank_jpeg()]).status_code == 200
    assert api.post("/embeddings", json={"images": ["%%%"]}).status_code == 400
    assert batch(api, [b"x"] * (MAX_BATCH_IMAGES + 1)).status_code == 413
    assert api.get("/identities", params={"limit": 1000}).json() == before

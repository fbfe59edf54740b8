"""Integration: JSON bodies with base64 images, against the multipart form, on a real Triton with real photos.

Every route that takes an image answers a JSON body exactly as it answers the form (the same
bytes), with the same limits and errors. The server here has its own gallery and small limits:
MAX_UPLOAD_BYTES between t1.jpg's size and the length of its base64 (so a JSON t1.jpg passes
only if the limit counts the decoded bytes), and a request limit a few photos wide.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ApiProcess, photo

pytestmark = pytest.mark.integration

UPLOAD_LIMIT = 140_000  # t1.jpg is 128,824 bytes, 171,768 in base64
REQUEST_LIMIT = 600_000  # players.jpg (374,610 bytes) fits in base64 (~500 KB), two of them do not
IMAGE_ROUTES = ["/detect", "/embedding", "/face-similarity", "/liveness", "/identify", "/identities",
                "/identities/{identity_id}/faces", "/embeddings", "/identities/{identity_id}/verify"]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def lfw_person(lfw_dir: Path, photos: int) -> list[Path]:
    """The first LFW person (by name) with at least `photos` photos."""
    for folder in sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir()):
        if len(files := sorted(folder.glob("*.jpg"))) >= photos:
            return files
    pytest.skip(f"no LFW person with {photos} photos")


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("json-api")
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db"),
           "MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "MAX_REQUEST_BYTES": str(REQUEST_LIMIT)}
    process = ApiProcess(env, folder / "api.log").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ApiProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=120) as keyed:
        yield keyed


def both(client: httpx.Client, path: str, images: dict[str, Path], **fields) -> tuple[httpx.Response, httpx.Response]:
    """The same request as a multipart form and as a JSON body (query parameters stay in the URL)."""
    query = fields.pop("params", None)
    form = client.post(path, params=query, data={k: str(v) for k, v in fields.items()},
                       files={name: (p.name, p.read_bytes()) for name, p in images.items()})
    as_json = client.post(path, params=query, json={**{name: b64(p) for name, p in images.items()}, **fields})
    return form, as_json


# --------------------------------------------------------------------------- the same answers
@pytest.mark.parametrize(
    ("path", "images", "fields"),
    [
        ("/detect", {"image": "t1.jpg"}, {}),
        ("/detect", {"image": "t1.jpg"}, {"params": {"include_annotated": "true"}}),
        ("/detect", {"image": "t1.jpg"}, {"params": {"annotate": "true"}}),  # the drawn JPEG
        ("/embedding", {"image": "yaoming.jpg"}, {}),
        ("/face-similarity", {"image_a": "yaoming.jpg", "image_b": "gdp.jpg"}, {}),
        ("/face-similarity", {"image_a": "yaoming.jpg", "image_b": "Tom_Hanks_54745.png"},
         {"params": {"include_aligned": "true"}}),
        ("/liveness", {"image": "yaoming.jpg"}, {}),  # 503 here: the anti-spoofing model is not installed
        ("/identify", {"image": "t1.jpg"}, {"top_k": 2, "threshold": 0.5}),
    ],
)
def test_a_json_body_gets_the_same_bytes_as_the_multipart_form(client, path, images, fields) -> None:
    form, as_json = both(client, path, {name: photo(file) for name, file in images.items()}, **fields)
    assert form.status_code in (200, 503), form.text
    assert (as_json.status_code, as_json.headers["content-type"]) == (form.status_code, form.headers["content-type"])
    assert as_json.content == form.content


def test_a_data_url_is_the_same_image_as_plain_base64(client) -> None:
    plain = client.post("/embedding", json={"image": b64(photo("yaoming.jpg"))})
    url = client.post("/embedding", json={"image": "data:image/jpeg;base64," + b64(photo("yaoming.jpg"))})
    assert plain.status_code == url.status_code == 200
    assert url.content == plain.content


def test_base64_with_line_breaks_or_the_url_safe_alphabet_is_accepted(client) -> None:
    data = photo("yaoming.jpg").read_bytes()
    reference = client.post("/embedding", files={"image": ("y.jpg", data)}).content
    wrapped = base64.encodebytes(data).decode()  # MIME style: a line break every 76 characters
    url_safe = base64.urlsafe_b64encode(data).decode().rstrip("=")
    for text in (wrapped, url_safe):
        assert client.post("/embedding", json={"image": text}).content == reference


# --------------------------------------------------------------------------- the same limits and errors
def test_invalid_base64_is_400_naming_the_field(client) -> None:
    good = b64(photo("yaoming.jpg"))
    response = client.post("/face-similarity", json={"image_a": good, "image_b": "not*base64!"})
    assert response.status_code == 400
    assert response.json() == {"detail": "image_b: not valid base64"}
    response = client.post("/identities", json={"name": "X", "images": [good, "%%%"]})
    assert response.status_code == 400 and response.json() == {"detail": "images[1]: not valid base64"}
    response = client.post("/detect", json={"image": "data:image/png,rawbytes"})
    assert response.status_code == 400
    assert response.json() == {"detail": "image: not a base64 data URL (data:image/jpeg;base64,...)"}


def test_a_wrong_or_missing_field_is_the_same_422_as_the_form(client) -> None:
    data = photo("yaoming.jpg").read_bytes()
    form = client.post("/detect", files={"picture": ("y.jpg", data)})
    as_json = client.post("/detect", json={"picture": base64.b64encode(data).decode()})
    assert form.status_code == as_json.status_code == 422
    assert as_json.json() == form.json()
    assert as_json.json()["detail"][0]["loc"] == ["body", "image"]
    missing = client.post("/face-similarity", json={"image_a": base64.b64encode(data).decode()})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "image_b"]


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b'{"image": ', ["body", 10], "json_invalid"),
        (b'["a list"]', ["body"], "dict_type"),
        (b'{"image": 5}', ["body", "image"], "value_error"),  # an image must be a string
        (b'{"image": "eHl6", "top_k": "many"}', ["body", "top_k"], "int_parsing"),
    ],
)
def test_a_malformed_json_body_is_a_fastapi_style_422(client, body: bytes, loc: list, kind: str) -> None:
    path = "/identify" if b"top_k" in body else "/detect"
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert (error["loc"], error["type"]) == (loc, kind)


def test_the_byte_limit_counts_the_decoded_image_and_the_body_limit_the_json(client) -> None:
    t1 = photo("t1.jpg")
    assert t1.stat().st_size < UPLOAD_LIMIT < len(b64(t1))
    assert client.post("/detect", json={"image": b64(t1)}).status_code == 200  # its base64 is above the limit
    form, as_json = both(client, "/detect", {"image": photo("players.jpg")})  # 374,610 bytes decoded
    assert form.status_code == as_json.status_code == 413
    assert as_json.json() == {"detail": f"image is larger than {UPLOAD_LIMIT} bytes"}
    too_long = client.post("/face-similarity", json={"image_a": b64(photo("players.jpg")),
                                                     "image_b": b64(photo("players.jpg"))})
    assert too_long.status_code == 413
    assert too_long.json() == {"detail": f"request body larger than {REQUEST_LIMIT} bytes"}


def test_in_a_batch_an_image_above_the_byte_limit_gets_its_own_413(client) -> None:
    images = [photo("yaoming.jpg"), photo("players.jpg")]
    form = client.post("/embeddings", files=[("images", (p.name, p.read_bytes())) for p in images])
    as_json = client.post("/embeddings", json={"images": [b64(p) for p in images]})
    assert form.status_code == as_json.status_code == 200
    for answer, name in ((form, "players.jpg"), (as_json, "images[1]")):
        first, second = answer.json()["results"]
        assert set(first) == {"embedding", "face", "model"}
        assert second == {"error": {"status": 413, "detail": f"{name} is larger than {UPLOAD_LIMIT} bytes"}}


@pytest.mark.parametrize("data", [b"", b"GIF89a but not really", b"\xff\xd8\xff\xe0" + b"\0" * 100])
def test_base64_of_something_that_is_not_an_image_is_the_same_400_as_the_form(client, data: bytes) -> None:
    form = client.post("/embedding", files={"image": ("x.jpg", data)})
    as_json = client.post("/embedding", json={"image": base64.b64encode(data).decode()})
    assert form.status_code == as_json.status_code == 400
    assert as_json.content == form.content


def test_the_key_is_checked_before_the_json_body(server: ApiProcess) -> None:
    with server.client(keyed=False) as anonymous:
        for body in ({"name": "X", "images": ["%%%"]}, {"name": "X", "images": "%"}, {}):
            assert anonymous.post("/identities", json=body).status_code == 401
        malformed = anonymous.post("/identify", content=b"{", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 401


# --------------------------------------------------------------------------- the gallery
def test_enrolling_and_identifying_with_json_answers_as_the_form_does(client, lfw_dir: Path) -> None:
    person = lfw_person(lfw_dir, 4)
    metadata = {"source": "lfw", "badge": 7}
    junk = Path(__file__)  # a text file: refused as not an image, in both forms
    form = client.post("/identities", data={"name": "Form", "metadata": '{"source": "lfw", "badge": 7}'},
                       files=[("images", (p.name, p.read_bytes())) for p in (person[0], junk)])
    as_json = client.post("/identities", json={"name": "Json", "images": [b64(person[0]), b64(junk)],
                                               "metadata": metadata})
    assert form.status_code == as_json.status_code == 201, as_json.text
    made_form, made_json = form.json(), as_json.json()
    assert made_json["rejected"] == made_form["rejected"] == [
        {"index": 1, "reason": "the uploaded file is not a decodable image"}]
    assert made_json["num_faces"] == made_form["num_faces"] == 1
    assert client.get(f"/identities/{made_json['id']}").json()["metadata"] == metadata
    text_metadata = client.post("/identities", json={"name": "Text", "images": b64(person[0]),
                                                     "metadata": '{"source": "lfw"}'})
    assert text_metadata.status_code == 201 and text_metadata.json()["num_faces"] == 1

    added_form = client.post(f"/identities/{made_form['id']}/faces",
                             files={"images": ("p.jpg", person[1].read_bytes())})
    added_json = client.post(f"/identities/{made_json['id']}/faces", json={"images": [b64(person[1])]})
    assert added_form.status_code == added_json.status_code == 200
    for key in ("num_faces", "rejected"):
        assert added_json.json()[key] == added_form.json()[key]

    form, as_json = both(client, "/identify", {"image": person[3]}, top_k=3)
    assert form.status_code == as_json.status_code == 200
    assert as_json.content == form.content
    [face] = as_json.json()["faces"]
    assert face["identity"]["id"] in (made_form["id"], made_json["id"], text_metadata.json()["id"])


def test_bad_json_input_leaves_the_gallery_unchanged(client, lfw_dir: Path) -> None:
    person = lfw_person(lfw_dir, 2)
    before = client.get("/identities", params={"limit": 1000}).json()
    refused = [
        {"name": "X", "images": [b64(person[0]), "%%%"]},  # 400: not base64
        {"images": [b64(person[0])]},  # 422: no name
        {"name": "X", "pictures": [b64(person[0])]},  # 422: misnamed
        {"name": "X", "images": [b64(person[0])], "metadata": [1, 2]},  # 422: not an object
        {"name": "X", "images": [base64.b64encode(b"junk").decode()]},  # 422: no usable face
    ]
    statuses = [client.post("/identities", json=body).status_code for body in refused]
    assert statuses == [400, 422, 422, 422, 422]
    assert client.get("/identities", params={"limit": 1000}).json() == before


# --------------------------------------------------------------------------- the schema
def test_the_openapi_schema_offers_json_beside_the_multipart_default_on_every_image_route(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in IMAGE_ROUTES:
        content = paths[path]["post"]["requestBody"]["content"]
        assert list(content) == ["multipart/form-data", "application/json"], path
        properties = content["application/json"]["schema"]["properties"]
        images = [name for name in properties if name.startswith("image")]
        assert images and all("base64" in properties[name]["description"] for name in images), path
    enroll = paths["/identities"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"type": "object"} in enroll["properties"]["metadata"]["anyOf"]
    assert enroll["required"] == ["name"]  # images, or embeddings instead
    vectors = {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 512,
                                          "maxItems": 512}, "minItems": 1}
    assert vectors in enroll["properties"]["embeddings"]["anyOf"]  # the list itself, or its JSON text
    patch = paths["/identities/{identity_id}"]["patch"]["requestBody"]["content"]
    assert list(patch) == ["application/json"]  # a JSON route already: left as it was

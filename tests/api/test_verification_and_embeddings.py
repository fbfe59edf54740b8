"""Integration: 1:1 verification, embedding-level search and enrollment, duplicate checks; real Triton, real photos.

One API process with its own gallery (SQLite; `Gallery.score_identity` is tested on both
backends in tests/gallery). LFW people: some enrolled from photos, some from embeddings, the
rest strangers; every refused request is checked to leave the gallery as it was.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from conftest import ApiProcess
from vision.detections import primary_face

pytestmark = pytest.mark.integration

SIMILARITY_TOLERANCE = 1e-4  # a face embedded alone (/embedding) or with the photo's others (/identify)


def lfw_people(lfw_dir: Path, minimum: int, count: int, exactly: bool = False) -> list[list[Path]]:
    chosen = []
    for folder in sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))
        if (len(files) == minimum) if exactly else (len(files) >= minimum):
            chosen.append(files)
    return chosen[:count]


def photo_file(path: Path, field: str = "image") -> dict:
    return {field: (path.name, path.read_bytes())}


def subject(body: dict) -> dict:
    """The face /identify found that is the photo's subject (LFW photos can show bystanders)."""
    boxes = np.array([f["bbox"] for f in body["faces"]], np.float32)
    return body["faces"][primary_face(boxes, (body["height"], body["width"]))]


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("verify-api")
    process = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}, folder / "api.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ApiProcess) -> Iterator[httpx.Client]:
    with server.client(timeout=120) as keyed:
        yield keyed


@pytest.fixture(scope="module")
def people(lfw_dir: Path) -> dict[str, list[Path]]:
    known = lfw_people(lfw_dir, 4, 4)
    [stranger] = lfw_people(lfw_dir, 1, 1, exactly=True)
    if len(known) < 4:
        pytest.skip("LFW has too few people with four photos")
    return {"ada": known[0], "bob": known[1], "cy": known[2], "dee": known[3], "stranger": stranger}


@pytest.fixture(scope="module")
def enrolled(client: httpx.Client, people) -> dict[str, dict]:
    """Ada and Bob enrolled from two photos each."""
    made = {}
    for name in ("ada", "bob"):
        response = client.post("/identities", data={"name": name},
                               files=[("images", (p.name, p.read_bytes())) for p in people[name][:2]])
        assert response.status_code == 201, response.text
        made[name] = response.json()
    return made


@pytest.fixture(scope="module")
def served_sha256(client: httpx.Client) -> str:
    [recognizer] = [m for m in client.get("/models").json()["models"] if m["name"] == "fr_model"]
    return recognizer["sha256"]


def gallery_state(client: httpx.Client) -> dict:
    return client.get("/identities", params={"limit": 1000}).json()


def embedding_of(client: httpx.Client, path: Path) -> dict:
    response = client.post("/embedding", files=photo_file(path))
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- verification
def test_the_enrolled_persons_other_photo_is_verified_and_a_stranger_is_not(client, people, enrolled) -> None:
    ada = enrolled["ada"]
    same = client.post(f"/identities/{ada['id']}/verify", files=photo_file(people["ada"][2]))
    assert same.status_code == 200, same.text
    body = same.json()
    assert body["same_person"] is True and body["similarity"] >= body["threshold"]
    assert body["identity"] == {"id": ada["id"], "name": "ada"}
    assert set(body["face"]) >= {"bbox", "score", "landmarks", "pose", "quality"} and "liveness" not in body["face"]
    # scored as /identify scores the same person for the same photo
    identified = subject(client.post("/identify", files=photo_file(people["ada"][2])).json())
    [match] = [m for m in identified["matches"] if m["id"] == ada["id"]]
    assert body["similarity"] == pytest.approx(match["similarity"], abs=SIMILARITY_TOLERANCE)
    assert body["threshold"] == client.post("/identify", files=photo_file(people["ada"][2])).json()["threshold"]

    stranger = client.post(f"/identities/{ada['id']}/verify", files=photo_file(people["stranger"][0])).json()
    assert stranger["same_person"] is False and stranger["similarity"] < stranger["threshold"]
    other = client.post(f"/identities/{enrolled['bob']['id']}/verify", files=photo_file(people["ada"][2])).json()
    assert other["same_person"] is False and other["identity"]["name"] == "bob"


def test_verification_takes_a_threshold_and_a_json_body(client, people, enrolled) -> None:
    ada = enrolled["ada"]["id"]
    path = people["stranger"][0]
    lenient = client.post(f"/identities/{ada}/verify", files=photo_file(path), data={"threshold": "-1"}).json()
    assert lenient["same_person"] is True and lenient["threshold"] == -1
    form = client.post(f"/identities/{ada}/verify", files=photo_file(people["ada"][3]), data={"threshold": "0.3"})
    as_json = client.post(f"/identities/{ada}/verify",
                          json={"image": base64.b64encode(people["ada"][3].read_bytes()).decode(), "threshold": 0.3})
    assert form.status_code == as_json.status_code == 200
    assert as_json.content == form.content


def test_verification_refuses_bad_input_with_a_clear_4xx_and_changes_nothing(server, client, people, enrolled) -> None:
    ada = enrolled["ada"]["id"]
    before = gallery_state(client)
    good = photo_file(people["ada"][2])
    cases = [
        (client.post("/identities/no-such-person/verify", files=good), 404, "no identity with id 'no-such-person'"),
        (client.post(f"/identities/{ada}/verify", files={"image": ("x.jpg", b"junk")}), 400, "not a decodable image"),
        (client.post(f"/identities/{ada}/verify", files={"picture": ("p.jpg", b"x")}), 422, "image"),
        (client.post(f"/identities/{ada}/verify", files=good, data={"threshold": "2"}), 422, "threshold"),
        (client.post(f"/identities/{ada}/verify", json={"image": "%%%"}), 400, "image: not valid base64"),
    ]
    with server.client(keyed=False) as anonymous:
        cases.append((anonymous.post(f"/identities/{ada}/verify", files=good), 401, "missing X-API-Key"))
    for response, status, fragment in cases:
        assert response.status_code == status, response.text
        assert fragment in str(response.json()["detail"])
    _, png = cv2.imencode(".png", np.full((200, 200, 3), 255, np.uint8))
    no_face = client.post(f"/identities/{ada}/verify", files={"image": ("blank.png", png.tobytes())})
    assert no_face.status_code == 422 and no_face.json()["detail"] == "no face was detected in the image"
    assert gallery_state(client) == before


# --------------------------------------------------------------------------- embeddings
def test_the_embedding_answers_name_the_recognizer_that_made_them(client, people, served_sha256) -> None:
    single = embedding_of(client, people["ada"][0])
    assert single["model"] == {"name": "w600k_mbf", "sha256": served_sha256}
    batch = client.post("/embeddings", files=[("images", (p.name, p.read_bytes())) for p in people["ada"][:2]])
    assert [r["model"] for r in batch.json()["results"]] == [single["model"]] * 2


def test_an_embedding_search_names_a_face_as_identify_does(client, people, enrolled, served_sha256) -> None:
    paths = [people["ada"][3], people["bob"][2], people["stranger"][0]]
    vectors = [embedding_of(client, path)["embedding"] for path in paths]
    response = client.post("/identify/embedding", json={"embeddings": vectors, "top_k": 2,
                                                        "model_sha256": served_sha256})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["sha256"] == served_sha256 and len(body["results"]) == 3
    for path, result in zip(paths, body["results"], strict=True):
        identified = client.post("/identify", files=photo_file(path), data={"top_k": 2}).json()
        face = subject(identified)
        assert body["threshold"] == identified["threshold"]
        assert [m["id"] for m in result["matches"]] == [m["id"] for m in face["matches"]]
        np.testing.assert_allclose([m["similarity"] for m in result["matches"]],
                                   [m["similarity"] for m in face["matches"]], atol=SIMILARITY_TOLERANCE)
        assert (result["identity"] or {}).get("id") == (face["identity"] or {}).get("id")
    assert [r["identity"]["name"] if r["identity"] else None for r in body["results"]] == ["ada", "bob", None]
    without_model = client.post("/identify/embedding", json={"embeddings": vectors[:1]})
    assert without_model.status_code == 200 and without_model.json()["results"] == body["results"][:1]


def test_a_person_enrolled_from_embeddings_is_identified(client, people, served_sha256) -> None:
    cy = people["cy"]
    batch = client.post("/embeddings", files=[("images", (p.name, p.read_bytes())) for p in cy[:2]]).json()
    vectors = [r["embedding"] for r in batch["results"]]
    made = client.post("/identities", json={"name": "cy", "embeddings": vectors, "metadata": {"from": "vectors"},
                                            "model_sha256": served_sha256})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["num_faces"] == 2 and len(body["face_ids"]) == 2 and body["rejected"] == []
    assert body["possible_duplicates"] == []
    face = subject(client.post("/identify", files=photo_file(cy[2])).json())
    assert face["identity"]["id"] == body["id"]
    samples = client.get(f"/identities/{body['id']}/faces").json()["faces"]
    assert [s["has_crop"] for s in samples] == [False, False]  # nothing to re-embed from
    assert client.get(f"/identities/{body['id']}").json()["metadata"] == {"from": "vectors"}
    # the form takes the vectors as JSON text
    form = client.post("/identities", data={"name": "cy (form)", "embeddings": str(vectors[:1])})
    assert form.status_code == 201 and form.json()["num_faces"] == 1
    assert [d["id"] for d in form.json()["possible_duplicates"]] == [body["id"]]
    assert client.delete(f"/identities/{form.json()['id']}").status_code == 200


def test_embeddings_of_another_model_are_refused_with_409(client, people, enrolled, served_sha256) -> None:
    vector = embedding_of(client, people["ada"][0])["embedding"]
    other = "ab" * 32
    before = gallery_state(client)
    searched = client.post("/identify/embedding", json={"embeddings": [vector], "model_sha256": other})
    stored = client.post("/identities", json={"name": "X", "embeddings": [vector], "model_sha256": other})
    for response in (searched, stored):
        assert response.status_code == 409, response.text
        detail = response.json()["detail"]
        assert other[:16] in detail and served_sha256[:16] in detail and "cannot be compared" in detail
    assert gallery_state(client) == before
    assert client.post("/identify/embedding", json={"embeddings": [vector],
                                                    "model_sha256": served_sha256.upper()}).status_code == 200


def post_json(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    """A JSON body as Python writes it: NaN and Infinity as the literals JSON parsers commonly accept."""
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def nan_vector() -> list[float]:
    return [math.nan] + [0.1] * 511


@pytest.mark.parametrize(
    ("vectors", "fragment"),
    [
        ([[0.0] * 512], "all zeros"),
        ([[0.1] * 511], "511"),
        ([[0.1] * 513], "513"),
        ([nan_vector()], "finite"),
        ([[math.inf] * 512], "finite"),
        ([["0.1"] * 512], "number"),
        ([], "empty"),
        ("[[0.1]]", None),
        (None, None),
    ],
)
def test_unusable_vectors_are_422_on_both_routes_and_change_nothing(client, enrolled, vectors, fragment) -> None:
    before = gallery_state(client)
    searched = post_json(client, "/identify/embedding", {"embeddings": vectors})
    stored = post_json(client, "/identities", {"name": "X", "embeddings": vectors})
    assert searched.status_code == 422, searched.text
    if vectors is None:  # no vectors at all: the enrollment has neither photos nor embeddings
        assert stored.status_code == 422 and "one of the two" in stored.json()["detail"]
    else:
        assert stored.status_code == 422, stored.text
        if fragment:
            assert fragment in stored.json()["detail"]
    assert gallery_state(client) == before


@pytest.mark.parametrize(
    ("form", "status", "fragment"),
    [
        ({"name": "X", "embeddings": "not json"}, 422, "embeddings is not valid JSON"),
        ({"name": "X", "embeddings": "[[NaN" + ", 0.1" * 511 + "]]"}, 422, "finite"),
        ({"name": "X", "embeddings": "{}"}, 422, "list of vectors"),
        ({"name": "X", "embeddings": str([[0.1] * 512] * 11)}, 413, "at most 10 vectors"),
        ({"name": "X"}, 422, "one of the two"),
    ],
)
def test_enrollment_from_bad_form_embeddings_is_refused(client, enrolled, form, status, fragment) -> None:
    before = gallery_state(client)
    response = client.post("/identities", data=form)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
    assert gallery_state(client) == before


def test_photos_and_embeddings_together_are_refused(client, people, enrolled) -> None:
    before = gallery_state(client)
    response = client.post("/identities", data={"name": "X", "embeddings": str([[0.1] * 512])},
                           files=photo_file(people["dee"][0], "images"))
    assert response.status_code == 422 and "not both" in response.json()["detail"]
    assert gallery_state(client) == before


def test_too_many_vectors_in_a_search_are_413(client, enrolled) -> None:
    response = client.post("/identify/embedding", json={"embeddings": [[0.1] * 512] * 33})
    assert response.status_code == 413 and "at most 32 vectors" in response.json()["detail"]


# --------------------------------------------------------------------------- duplicates
def test_enrolling_the_same_person_twice_lists_them_or_is_refused(client, people) -> None:
    dee = people["dee"]
    first = client.post("/identities", data={"name": "dee"}, files=photo_file(dee[0], "images"))
    assert first.status_code == 201 and first.json()["possible_duplicates"] == []
    before = gallery_state(client)
    refused = client.post("/identities", params={"on_duplicate": "reject"}, data={"name": "dee again"},
                          files=photo_file(dee[1], "images"))
    assert refused.status_code == 409, refused.text
    assert first.json()["id"] in refused.json()["detail"] and "nothing was stored" in refused.json()["detail"]
    vector = embedding_of(client, dee[1])["embedding"]
    refused_vectors = client.post("/identities", params={"on_duplicate": "reject"},
                                  json={"name": "dee again", "embeddings": [vector]})
    assert refused_vectors.status_code == 409
    assert gallery_state(client) == before  # nothing stored by either

    second = client.post("/identities", data={"name": "dee again"}, files=photo_file(dee[1], "images"))
    assert second.status_code == 201
    [duplicate] = second.json()["possible_duplicates"]
    assert duplicate["id"] == first.json()["id"] and duplicate["name"] == "dee"
    threshold = client.post("/identify/embedding", json={"embeddings": [vector]}).json()["threshold"]
    assert duplicate["similarity"] >= threshold
    # adding photos to someone is not a new person: no duplicate list
    added = client.post(f"/identities/{second.json()['id']}/faces", files=photo_file(dee[2], "images")).json()
    assert "possible_duplicates" not in added
    bad = client.post("/identities", params={"on_duplicate": "maybe"}, data={"name": "X"},
                      files=photo_file(dee[3], "images"))
    assert bad.status_code == 422


def test_the_new_routes_need_the_key_and_are_documented_with_examples(server, client, enrolled) -> None:
    with server.client(keyed=False) as anonymous:
        for path, kwargs in [("/identify/embedding", {"json": {"embeddings": [[0.1] * 512]}}),
                             ("/identities", {"json": {"name": "X", "embeddings": [[0.1] * 512]}})]:
            assert anonymous.post(path, **kwargs).status_code == 401
    paths = client.get("/openapi.json").json()["paths"]
    verify = paths["/identities/{identity_id}/verify"]["post"]
    search = paths["/identify/embedding"]["post"]
    enroll = paths["/identities"]["post"]
    for operation in (verify, search, enroll):
        assert operation["security"] == [{"APIKey": []}]
    assert {"404", "401", "422"} <= set(verify["responses"])
    assert {"409", "413", "422"} <= set(search["responses"]) and {"409"} <= set(enroll["responses"])
    assert set(enroll["requestBody"]["content"]["application/json"]["examples"]) == {"photos", "embeddings"}
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["EmbeddingSearch"]["examples"][0]["embeddings"][0] == [0.0442] * 512
    assert schemas["EmbeddingSearchResponse"]["examples"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xfe not text", 400),  # not UTF-8: FastAPI cannot read it as JSON text
        (b"{not json", 422),
        (b"[[0.1]]", 422),  # not an object
        (b'{"embeddings": [[0.1]], "top_k": 0}', 422),
        (b'{"embeddings": [[0.1]], "threshold": 2}', 422),
    ],
)
def test_an_unreadable_search_body_is_a_clear_4xx_and_changes_nothing(client, enrolled, body, status) -> None:
    before = gallery_state(client)
    response = client.post("/identify/embedding", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert gallery_state(client) == before

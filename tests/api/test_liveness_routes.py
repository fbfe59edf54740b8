"""Integration: the anti-spoofing model on a real Triton, through the API, against the PyTorch models.

A session converts the authors' checkpoints (`../shared/models/antispoof`) with
`convert_to_onnx.py antispoof`'s code and installs the served graph into a scratch copy of the
model repository (`model_tools.antispoof_install`, what ANTISPOOF_FROM does): `live_triton` in
conftest.py, shared with the demo page's tests. A second Triton on the core models alone
(`core_triton`) shows the 503 and that everything else keeps working.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import LFW_DIR, ApiProcess, TritonProcess, checkpoints, photo
from imaging.decode import decode_image
from pipeline import FacePipeline
from settings import Settings
from triton_service import TritonClient
from vision.detections import primary_face

SAMPLES = {"image_F1.jpg": False, "image_F2.jpg": False, "image_T1.jpg": True}  # is_real per the authors
SCORE_TOLERANCE = 1e-3
LFW_PHOTOS = 24


def api_on(triton: TritonProcess, folder: Path, **env: str) -> ApiProcess:
    return ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db"), **env},
                      folder / "api.log").start()


@pytest.fixture(scope="session")
def live_api(live_triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = api_on(live_triton, tmp_path_factory.mktemp("live-api"), ENROLL_REQUIRE_LIVE="true")
    with server.client(timeout=120) as client:
        yield client
    server.stop()


@pytest.fixture(scope="session")
def reference():
    from model_tools.minifasnet import TorchReference

    return TorchReference.from_folder(checkpoints())


def pytorch_score(triton: TritonProcess, reference, data: bytes) -> float:
    """The authors' models in PyTorch on the primary face the served pipeline finds (unrounded box)."""
    image = decode_image(data, max_pixels=Settings().max_image_pixels)

    async def primary_box() -> np.ndarray:
        client = TritonClient(triton.url, 60)
        await client.open()
        try:
            [found] = await FacePipeline(client, Settings()).detect([image])
        finally:
            await client.close()
        return found.boxes[[primary_face(found.boxes, image.shape[:2])]]

    return float(reference.real_scores(image[..., ::-1], asyncio.run(primary_box()))[0])


def sample(name: str) -> bytes:
    return (checkpoints() / "samples" / name).read_bytes()


@pytest.mark.parametrize(("name", "is_real"), sorted(SAMPLES.items()))
def test_liveness_calls_the_authors_samples_as_they_do(live_api, live_triton, reference, name, is_real) -> None:
    answer = live_api.post("/liveness", files={"image": (name, sample(name))})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"face", "real_score", "is_real", "threshold"}
    assert set(body["face"]) == {"bbox", "score", "landmarks"}
    assert body["threshold"] == 0.5 and 0 <= body["real_score"] <= 1
    assert body["is_real"] is is_real and body["is_real"] == (body["real_score"] >= body["threshold"])
    assert abs(body["real_score"] - pytorch_score(live_triton, reference, sample(name))) <= SCORE_TOLERANCE


def lfw_photos(count: int) -> list[Path]:
    if not (LFW_DIR / "pairs.tsv").is_file():
        pytest.skip(f"LFW dev-test pairs not found at {LFW_DIR}")
    photos = sorted((LFW_DIR / "original").glob("*/*.jpg"))
    return photos[:: max(1, len(photos) // count)][:count]


def test_served_scores_equal_pytorch_on_lfw_photos(live_api, live_triton, reference) -> None:
    differences = []
    for path in lfw_photos(LFW_PHOTOS):
        answer = live_api.post("/liveness", files={"image": (path.name, path.read_bytes())})
        assert answer.status_code == 200, (path, answer.text)
        differences.append(abs(answer.json()["real_score"] - pytorch_score(live_triton, reference, path.read_bytes())))
    assert len(differences) == LFW_PHOTOS and max(differences) <= SCORE_TOLERANCE, max(differences)


def test_detect_with_liveness_scores_every_face_like_liveness_scores_the_main_one(live_api) -> None:
    data = photo("t1.jpg").read_bytes()
    plain = live_api.post("/detect", files={"image": ("t1.jpg", data)}).json()
    checked = live_api.post("/detect?liveness=true", files={"image": ("t1.jpg", data)}).json()
    assert "liveness" not in plain["faces"][0]
    assert [f["bbox"] for f in checked["faces"]] == [f["bbox"] for f in plain["faces"]] and len(plain["faces"]) == 6
    for face in checked["faces"]:
        assert set(face["liveness"]) == {"real_score", "is_real"}
        assert face["liveness"]["is_real"] == (face["liveness"]["real_score"] >= 0.5)
    one = live_api.post("/liveness", files={"image": ("T1.jpg", sample("image_T1.jpg"))}).json()
    again = live_api.post("/detect?liveness=true", files={"image": ("T1.jpg", sample("image_T1.jpg"))}).json()
    assert one["real_score"] in [f["liveness"]["real_score"] for f in again["faces"]]


def test_similarity_and_identify_carry_liveness_only_when_asked(live_api) -> None:
    files = {"image_a": ("T1.jpg", sample("image_T1.jpg")), "image_b": ("F2.jpg", sample("image_F2.jpg"))}
    plain = live_api.post("/face-similarity", files=files).json()
    assert "liveness_a" not in plain
    checked = live_api.post("/face-similarity?liveness=true", files=files).json()
    assert checked["liveness_a"]["is_real"] is True and checked["liveness_b"]["is_real"] is False
    identified = live_api.post("/identify?liveness=true", files={"image": ("t1.jpg", photo("t1.jpg").read_bytes())})
    assert identified.status_code == 200, identified.text
    faces = identified.json()["faces"]
    assert len(faces) == 6 and all(set(f["liveness"]) == {"real_score", "is_real"} for f in faces)
    assert all(f["identity"] is None for f in faces)  # an empty gallery: unknown, and still null
    unasked = live_api.post("/identify", files={"image": ("t1.jpg", photo("t1.jpg").read_bytes())}).json()
    assert all("liveness" not in f and f["identity"] is None for f in unasked["faces"])


@pytest.mark.parametrize(("path", "name"), [("/liveness", "image_T1.jpg"), ("/liveness", "image_F1.jpg"),
                                             ("/detect?liveness=true", "image_F2.jpg")])
def test_a_json_body_gets_the_same_liveness_answer_as_the_form(live_api, path: str, name: str) -> None:
    form = live_api.post(path, files={"image": (name, sample(name))})
    as_json = live_api.post(path, json={"image": base64.b64encode(sample(name)).decode()})
    assert form.status_code == 200, form.text
    assert as_json.content == form.content


def test_enrollment_requiring_live_faces_refuses_a_spoof_with_its_score(live_api) -> None:
    answer = live_api.post("/identities", data={"name": "Spoofed"},
                           files=[("images", ("T1.jpg", sample("image_T1.jpg"))),
                                  ("images", ("F2.jpg", sample("image_F2.jpg")))])
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["num_faces"] == 1
    [refused] = body["rejected"]
    assert refused["index"] == 1 and "real score 0.00" in refused["reason"] and "at least 0.5" in refused["reason"]
    only_spoof = live_api.post("/identities", data={"name": "Only spoof"},
                               files=[("images", ("F2.jpg", sample("image_F2.jpg")))])
    assert only_spoof.status_code == 422 and "real score" in only_spoof.json()["detail"]


def test_verification_carries_the_faces_liveness_only_when_asked(live_api) -> None:
    live = sample("image_T1.jpg")
    made = live_api.post("/identities", data={"name": "Live T1"}, files={"images": ("T1.jpg", live)})
    assert made.status_code == 201, made.text
    path = f"/identities/{made.json()['id']}/verify"
    checked = live_api.post(path, params={"liveness": "true"}, files={"image": ("T1.jpg", live)}).json()
    alone = live_api.post("/liveness", files={"image": ("T1.jpg", live)}).json()
    assert checked["same_person"] is True
    assert checked["face"]["liveness"] == {"real_score": alone["real_score"], "is_real": True}
    assert "liveness" not in live_api.post(path, files={"image": ("T1.jpg", live)}).json()["face"]
    spoof = live_api.post(path, params={"liveness": "true"}, files={"image": ("F2.jpg", sample("image_F2.jpg"))})
    assert spoof.status_code == 200 and spoof.json()["face"]["liveness"]["is_real"] is False


def test_models_metrics_and_ready_with_the_anti_spoofing_model(live_api) -> None:
    names = [m["name"] for m in live_api.get("/models").json()["models"]]
    assert names == ["face_detector", "fr_model", "antispoof"]
    served = live_api.get("/models").json()["models"][2]
    assert served["inputs"][0]["data_type"] == "TYPE_UINT8" and served["inputs"][0]["dims"] == [2, 80, 80, 3]
    assert live_api.get("/ready").json()["models"] == ["face_detector", "fr_model"]
    live_api.post("/liveness", files={"image": ("T1.jpg", sample("image_T1.jpg"))})
    scrape = live_api.get("/metrics").text
    assert 'frtriton_liveness_checks_total{result="real"}' in scrape


# --------------------------------------------------------------------------- not installed
@pytest.fixture(scope="module")
def core_api(core_triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = api_on(core_triton, tmp_path_factory.mktemp("core-only"))
    with server.client(timeout=120) as client:
        yield client
    server.stop()


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/liveness", {"image": "t1.jpg"}),
        ("/detect?liveness=true", {"image": "t1.jpg"}),
        ("/identify?liveness=true", {"image": "t1.jpg"}),
        ("/face-similarity?liveness=true", {"image_a": "t1.jpg", "image_b": "t1.jpg"}),
    ],
)
def test_without_the_model_liveness_answers_503_saying_how_to_install_it(core_api, path, fields) -> None:
    files = {field: (name, photo(name).read_bytes()) for field, name in fields.items()}
    answer = core_api.post(path, files=files)
    assert answer.status_code == 503, answer.text
    assert "ANTISPOOF_FROM" in answer.json()["detail"] and "Retry-After" in answer.headers


def test_without_the_model_a_verification_with_liveness_answers_503(core_api) -> None:
    data = photo("yaoming.jpg").read_bytes()
    made = core_api.post("/identities", data={"name": "Yao"}, files={"images": ("y.jpg", data)})
    assert made.status_code == 201, made.text
    files = {"image": ("y.jpg", data)}
    answer = core_api.post(f"/identities/{made.json()['id']}/verify?liveness=true", files=files)
    assert answer.status_code == 503 and "ANTISPOOF_FROM" in answer.json()["detail"]
    assert core_api.post(f"/identities/{made.json()['id']}/verify", files=files).json()["same_person"] is True


def test_without_the_model_everything_else_keeps_working(core_api) -> None:
    assert core_api.get("/ready").status_code == 200
    assert [m["name"] for m in core_api.get("/models").json()["models"]] == ["face_detector", "fr_model"]
    data = photo("t1.jpg").read_bytes()
    assert core_api.post("/detect", files={"image": ("t1.jpg", data)}).status_code == 200
    assert core_api.post("/liveness", files={"image": ("x.jpg", b"not an image")}).status_code == 400


def test_liveness_without_a_face_is_422_and_a_bad_image_400(live_api) -> None:
    import cv2

    blank = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes()
    answer = live_api.post("/liveness", files={"image": ("blank.png", blank)})
    assert answer.status_code == 422 and "no face" in answer.json()["detail"]
    assert live_api.post("/liveness", files={"image": ("x.jpg", b"\xff\xd8 not a jpeg")}).status_code == 400

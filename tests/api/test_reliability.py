"""Faults and load: Triton going away and coming back, back-pressure and queueing, request ids, CORS.

Integration tests run a Triton of their own (so they can kill it) and the API pointed at it
through TRITON_URL, the way `make api` runs against an external Triton.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import create_app
from conftest import ApiProcess, TritonProcess, model_repository, one_slot_api_with_a_silent_triton, photo
from settings import Settings

pytestmark = pytest.mark.integration

# A hang would show as the client's timeout; a dead Triton must be reported well before it.
ANSWER_TIMEOUT_S = 15


@pytest.fixture()
def own_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    server = TritonProcess(model_repository(), tmp_path / "triton.log").start()
    yield server
    server.stop()


def embed(client: httpx.Client, name: str = "t1.jpg") -> httpx.Response:
    return client.post("/embedding", files={"image": (name, photo(name).read_bytes())})


def test_api_answers_503_while_its_external_triton_is_gone_and_recovers_without_a_restart(
    own_triton: TritonProcess, tmp_path: Path
) -> None:
    api = ApiProcess({"TRITON_URL": own_triton.url}, tmp_path / "api.log").start()
    try:
        with httpx.Client(base_url=api.url, timeout=ANSWER_TIMEOUT_S) as client:
            assert embed(client).status_code == 200
            own_triton.process.kill()  # no goodbye: as if the machine went away
            own_triton.process.wait()
            down = embed(client)
            assert down.status_code == 503, down.text
            assert down.headers["Retry-After"] == "5" and "Triton" in down.json()["detail"]
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["detail"]
            assert client.get("/health").status_code == 200  # the API itself is alive
            own_triton.start()  # same ports, like a restarted container
            assert client.get("/ready").status_code == 200
            back = embed(client)
            assert back.status_code == 200 and len(back.json()["embedding"]) == 512
    finally:
        api.stop()


def test_a_triton_that_stops_answering_costs_one_timeout_not_a_hang(
    own_triton: TritonProcess, tmp_path: Path
) -> None:
    api = ApiProcess({"TRITON_URL": own_triton.url, "TRITON_TIMEOUT_S": "2"}, tmp_path / "api.log").start()
    try:
        with httpx.Client(base_url=api.url, timeout=ANSWER_TIMEOUT_S) as client:
            assert embed(client).status_code == 200
            os.kill(own_triton.process.pid, signal.SIGSTOP)  # alive but silent: a hung model server
            try:
                stuck = embed(client)
                assert stuck.status_code == 503 and "within 2 s" in stuck.json()["detail"]
                assert stuck.headers["Retry-After"] == "5"
            finally:
                os.kill(own_triton.process.pid, signal.SIGCONT)
            assert embed(client).status_code == 200
    finally:
        api.stop()


def burst(url: str, requests: int, clients: int, probes: int = 0) -> tuple[list[httpx.Response], list[int]]:
    """`requests` detections of t1.jpg from `clients` threads, /ready polled `probes` times meanwhile."""
    data = photo("t1.jpg").read_bytes()

    def detect(_: int) -> httpx.Response:
        return httpx.post(f"{url}/detect", files={"image": ("t1.jpg", data)}, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(clients + 1) as pool:
        answers = pool.map(detect, range(requests))
        ready = [httpx.get(f"{url}/ready", timeout=30).status_code for _ in range(probes)]
        return list(answers), ready


def admission(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("frtriton_admission_"):
                samples[sample.name + "".join(f"/{v}" for v in sample.labels.values())] = sample.value
    return samples


def test_a_burst_beyond_the_in_flight_limit_but_within_the_queue_is_all_served(
    triton: TritonProcess, tmp_path: Path
) -> None:
    # Two at work, up to 32 waiting, and a wait long enough that no machine is too slow for it.
    env = {"TRITON_URL": triton.url, "MAX_IN_FLIGHT": "2", "QUEUE_LENGTH": "32", "QUEUE_TIMEOUT_S": "120"}
    api = ApiProcess(env, tmp_path / "api.log").start()
    try:
        before = admission(api.url)
        answers, ready = burst(api.url, requests=24, clients=12, probes=5)
        assert [a.status_code for a in answers] == [200] * 24
        assert all(len(a.json()["faces"]) == 6 and a.headers["X-Request-ID"] for a in answers)
        assert ready == [200] * 5  # probes never wait behind the burst
        after = admission(api.url)
        assert after["frtriton_admission_wait_seconds_count"] > before["frtriton_admission_wait_seconds_count"], (
            "nobody waited: the burst never exceeded the in-flight limit and the test proved nothing"
        )
        assert after["frtriton_admission_shed_total/queue_full"] == before["frtriton_admission_shed_total/queue_full"]
        assert after["frtriton_admission_shed_total/timeout"] == before["frtriton_admission_shed_total/timeout"]
        assert after["frtriton_admission_queue_depth"] == 0 and after["frtriton_admission_active"] == 0
    finally:
        api.stop()


def test_requests_beyond_the_queue_get_503_at_once_with_a_computed_retry_after(
    triton: TritonProcess, tmp_path: Path
) -> None:
    env = {"TRITON_URL": triton.url, "MAX_IN_FLIGHT": "1", "QUEUE_LENGTH": "1", "QUEUE_TIMEOUT_S": "120"}
    api = ApiProcess(env, tmp_path / "api.log").start()
    try:
        answers, ready = burst(api.url, requests=24, clients=12, probes=3)
        statuses = sorted({a.status_code for a in answers})
        assert statuses == [200, 503], statuses
        refused = [a for a in answers if a.status_code == 503]
        assert all(re.fullmatch(r"[1-9][0-9]*", a.headers["Retry-After"]) for a in refused)
        assert all("busy" in a.json()["detail"] and a.headers["X-Request-ID"] for a in refused)
        assert all(len(a.json()["faces"]) == 6 for a in answers if a.status_code == 200)
        assert admission(api.url)["frtriton_admission_shed_total/queue_full"] == len(refused)
        # probes are never refused, and once the burst is over the service works as before
        assert ready == [200] * 3 and httpx.get(f"{api.url}/ready").status_code == 200
        assert burst(api.url, requests=1, clients=1)[0][0].status_code == 200
    finally:
        api.stop()


MIB = 1 << 20
BOUNDARY = "queued-upload"
UPLOAD_HEAD = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
               "Content-Type: image/jpeg\r\n\r\n").encode()
UPLOAD_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def upload_head(megabytes: int) -> bytes:
    """The request line and headers of a POST /detect whose multipart body holds `megabytes` MiB."""
    length = len(UPLOAD_HEAD) + megabytes * MIB + len(UPLOAD_TAIL)
    return (f"POST /detect HTTP/1.1\r\nHost: api\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()


class Upload:
    """A raw POST /detect of a `megabytes` body, sent from a thread as fast as the server reads it."""

    def __init__(self, port: int, megabytes: int) -> None:
        self.megabytes = megabytes
        self.sent = 0  # body bytes the kernel took so far
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.head = upload_head(megabytes)

    def run(self) -> bytes:
        """Send everything, then return the answer's status line."""
        with self.sock:
            self.sock.sendall(self.head + UPLOAD_HEAD)
            chunk = bytes(MIB)
            for _ in range(self.megabytes):
                self.sock.sendall(chunk)
                self.sent += MIB
            self.sock.sendall(UPLOAD_TAIL)
            answer = b""
            while b"\r\n" not in answer and (data := self.sock.recv(4096)):
                answer += data
            return answer.split(b"\r\n", 1)[0]


def resident_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def test_requests_waiting_in_the_queue_leave_their_uploads_unread(tmp_path: Path) -> None:
    """Four 40 MB uploads wait behind a request stuck on a Triton that never answers: the API has
    read a few hundred KB of each (the server's read-ahead), not 160 MB; once admitted, each is read."""
    megabytes, waiting = 40, 4
    with socket.socket() as silent:  # accepts connections, never answers: the one slot stays taken
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {"TRITON_URL": f"127.0.0.1:{silent.getsockname()[1]}", "TRITON_TIMEOUT_S": "300",
               "MAX_IN_FLIGHT": "1", "QUEUE_LENGTH": str(waiting), "QUEUE_TIMEOUT_S": "300"}
        api = ApiProcess(env, tmp_path / "api.log").start()
        try:
            with concurrent.futures.ThreadPoolExecutor(waiting + 1) as pool, \
                    httpx.Client(base_url=api.url, timeout=300) as client:
                stuck = pool.submit(embed, client)
                while admission(api.url)["frtriton_admission_active"] < 1:
                    assert not stuck.done(), stuck.result().text
                baseline = resident_mb(api.process.pid)
                uploads = [Upload(api.port, megabytes) for _ in range(waiting)]
                answers = [pool.submit(upload.run) for upload in uploads]
                while admission(api.url)["frtriton_admission_queue_depth"] < waiting:
                    assert not any(a.done() for a in answers), [a.result() for a in answers if a.done()]
                progress = None
                while progress != (progress := [u.sent for u in uploads]):  # until every sender is blocked
                    time.sleep(0.5)
                grown = resident_mb(api.process.pid) - baseline
                assert all(u.sent < megabytes * MIB for u in uploads), "a waiting request's body was read"
                assert grown < megabytes, f"the API grew by {grown:.0f} MB while {waiting} uploads waited"
                silent.close()  # the stuck request fails (503), and the queue moves on
                assert stuck.result().status_code == 503
                # each was admitted in turn, its upload read in full and refused for what it is
                assert [a.result() for a in answers] == [b"HTTP/1.1 413 Request Entity Too Large"] * waiting
        finally:
            api.stop()


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response from `sock`: its status line and its body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        body += chunk
    return head.split(b"\r\n", 1)[0], body[:length]


def test_a_refused_upload_is_answered_503_and_its_connection_stays_usable(tmp_path: Path) -> None:
    """The queue answers a refused upload before reading it; the server must still read on (and
    drop) the rest, so the sender gets the 503, not a broken pipe, and can reuse the connection."""
    megabytes = 8
    with (
        one_slot_api_with_a_silent_triton(tmp_path / "api.log") as (api, silent),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=api.url, timeout=300) as client,
    ):
        stuck = pool.submit(embed, client)
        while admission(api.url)["frtriton_admission_active"] < 1:
            assert not stuck.done(), stuck.result().text
        with socket.create_connection(("127.0.0.1", api.port), timeout=60) as conn:
            conn.sendall(upload_head(megabytes) + UPLOAD_HEAD + bytes(megabytes * MIB) + UPLOAD_TAIL)
            status, body = read_response(conn)
            assert status == b"HTTP/1.1 503 Service Unavailable"
            assert "busy" in json.loads(body)["detail"]
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")  # the same connection
            status, body = read_response(conn)
            assert status == b"HTTP/1.1 200 OK" and json.loads(body)["status"] == "ok"
        silent.close()  # the stuck request fails (503), and the service moves on
        assert stuck.result().status_code == 503


def test_every_answer_carries_a_request_id_that_the_logs_use_and_no_secret_is_logged(
    triton: TritonProcess, tmp_path: Path
) -> None:
    key = "k3y-that-must-not-leak"
    env = {"TRITON_URL": triton.url, "API_KEY": key, "API_KEY_READS": "true"}
    api = ApiProcess(env, tmp_path / "api.log").start()
    try:
        with httpx.Client(base_url=api.url, timeout=60) as client:
            mine = client.get("/health", headers={"X-Request-ID": "client-trace-42"})
            assert mine.headers["X-Request-ID"] == "client-trace-42"
            forged = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
            assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Request-ID"])
            embedded = embed(client)
            vector = embedded.json()["embedding"]
            enrolled = client.post(
                "/identities",
                data={"name": "Yao"},
                files={"images": ("y.jpg", photo("yaoming.jpg").read_bytes())},
                headers={"X-API-Key": key},
            )
            assert enrolled.status_code == 201
            refused = client.get("/identities", headers={"X-API-Key": "wrong"})
            assert refused.status_code == 401 and refused.headers["X-Request-ID"]
            down = client.post("/detect", files={"image": ("x.jpg", b"not an image")})
            assert down.status_code == 400 and down.headers["X-Request-ID"]
    finally:
        api.stop()
    log = (tmp_path / "api.log").read_text()
    assert "[client-trace-42]" in log and f"[{embedded.headers['X-Request-ID']}]" in log
    assert key not in log and "wrong" not in log
    assert f"{vector[0]:.6f}"[:8] not in log  # no embedding values


def test_cors_is_closed_by_default_and_opens_to_configured_origins() -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = TestClient(create_app(Settings())).options("/embedding", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    app = create_app(Settings(cors_origins=["https://app.example"]))
    opened = TestClient(app).options("/embedding", headers=preflight)
    assert opened.status_code == 200
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    other = TestClient(app).options("/embedding", headers={**preflight, "Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_a_bug_answers_500_in_json_with_the_request_id_and_is_logged_with_it(caplog) -> None:
    app = create_app(Settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    service_log = logging.getLogger("frtriton")  # does not propagate: capture it directly
    service_log.addHandler(caplog.handler)
    try:
        answer = TestClient(app, raise_server_exceptions=False).get("/boom", headers={"X-Request-ID": "trace-7"})
    finally:
        service_log.removeHandler(caplog.handler)
    assert answer.status_code == 500 and answer.json() == {"detail": "internal server error"}
    assert answer.headers["X-Request-ID"] == "trace-7"
    assert any(getattr(r, "request_id", None) == "trace-7" and r.exc_info for r in caplog.records)

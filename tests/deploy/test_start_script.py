"""Integration: Docker/start.sh, the script `make run` and the Docker image run, end to end."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, core_repository, free_ports, model_repository, photo, start_with_retry

pytestmark = pytest.mark.integration
START = ROOT / "Docker" / "start.sh"


def launch(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int, Path]:
    """start.sh on four fresh ports (API, Triton HTTP, gRPC, metrics); not waited for."""
    port, http, grpc, metrics = free_ports(4)
    log = tmp_path / "start.log"
    environment = {
        **os.environ,
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "FASTAPI_PORT": str(port),
        "FASTAPI_HOST": "127.0.0.1",
        "TRITON_HTTP_PORT": str(http),
        "TRITON_GRPC_PORT": str(grpc),
        "TRITON_METRICS_PORT": str(metrics),
        "TRITON_REPO": str(model_repository()),
        "GALLERY_DB": str(tmp_path / "gallery.db"),
        **env,
    }
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            ["bash", str(START)], env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, port, log


def wait_ready(process: subprocess.Popen, port: int, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"start.sh exited early:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def launch_ready(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int, Path]:
    """start.sh up and ready; launched again on new ports if one of its ports was taken."""
    started: list = []

    def attempt() -> str | None:
        process, port, log = launch(tmp_path, **env)
        try:
            wait_ready(process, port, log)
        except AssertionError:
            stop(process)
            return log.read_text(errors="replace")
        started[:] = [process, port, log]
        return None

    start_with_retry(attempt, move=lambda: None)  # every launch takes fresh ports
    return started[0], started[1], started[2]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants_named(pid: int, name: str) -> list[int]:
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        for child in children(current):
            queue.append(child)
            if name in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"):
                found.append(child)
    return found


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_start_script_serves_the_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, port, log = launch_ready(tmp_path)
    try:
        data = photo("gdp.jpg").read_bytes()
        response = httpx.post(
            f"http://127.0.0.1:{port}/face-similarity",
            files={"image_a": ("a.jpg", data), "image_b": ("b.jpg", data)},
            timeout=60,
        )
        assert response.status_code == 200 and response.json()["same_person"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        stop(process)
    assert not descendants_named(process.pid, "tritonserver")


def requests_taken(port: int) -> float:
    """Requests the API is working on or holding in its admission queue (from /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(("frtriton_admission_active ", "frtriton_admission_queue_depth ")))


def test_sigterm_lets_requests_in_flight_finish_before_stopping(tmp_path: Path) -> None:
    # Two at work, the rest waiting in the admission queue; a queue timeout long enough that on a
    # slow machine the waiting requests are still served, not shed.
    process, port, log = launch_ready(tmp_path, MAX_IN_FLIGHT="2", QUEUE_TIMEOUT_S="120")
    data = photo("t1.jpg").read_bytes()
    finished: list[tuple[int, float]] = []

    def detect() -> None:
        try:
            answer = httpx.post(f"http://127.0.0.1:{port}/detect", files={"image": ("t1.jpg", data)}, timeout=120)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # Never in flight: connected after the API stopped listening, or still in the listen
            # backlog / unread when it closed its idle connections (a reset, before any answer).
            return
        finished.append((answer.status_code, time.monotonic()))

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(detect) for _ in range(16)]  # ~0.7 s of work on two cores
            deadline = time.monotonic() + 30
            while (taken := requests_taken(port)) < 3 and time.monotonic() < deadline:  # two at work, 1+ waiting
                time.sleep(0.01)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
        for call in calls:
            call.result()  # any other failure of a client fails the test
    finally:
        stop(process)
    # every request the API had taken was answered in full, including the ones after SIGTERM
    assert finished and all(status == 200 for status, _ in finished), finished
    assert len(finished) >= taken, (taken, finished)
    assert any(at > signalled for _, at in finished), "nothing was in flight: the test proved nothing"


def test_start_script_exits_non_zero_when_triton_dies(tmp_path: Path) -> None:
    process, port, log = launch_ready(tmp_path)
    try:
        [triton_pid] = descendants_named(process.pid, "tritonserver")
        os.kill(triton_pid, signal.SIGKILL)
        assert process.wait(60) != 0
        assert "tritonserver exited" in log.read_text()
    finally:
        stop(process)


def test_start_script_uses_an_external_triton_and_boots_none(tmp_path: Path, triton) -> None:
    process, port, log = launch_ready(tmp_path, TRITON_URL=triton.url)
    try:
        assert not descendants_named(process.pid, "tritonserver")
        assert "external Triton" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        stop(process)


def test_start_script_without_a_model_repository_fails_with_a_clear_message(tmp_path: Path) -> None:
    process, _, log = launch(tmp_path, TRITON_REPO=str(tmp_path / "empty"))
    assert process.wait(30) == 1
    assert "no model repository" in log.read_text()


def test_antispoof_from_installs_the_model_before_triton_starts_and_it_stays(tmp_path: Path, converted: Path) -> None:
    repo = core_repository(tmp_path / "repo")  # what `triton_service.py serve` (run by start.sh) installs into
    process, port, log = launch(tmp_path, TRITON_REPO=str(repo), ANTISPOOF_FROM=str(converted))
    try:
        wait_ready(process, port, log)
        names = [m["name"] for m in httpx.get(f"http://127.0.0.1:{port}/models", timeout=30).json()["models"]]
        assert names == ["face_detector", "fr_model", "antispoof"]
        assert "anti-spoofing model MiniFASNetV2+MiniFASNetV1SE installed" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        stop(process)
    assert (repo / "antispoof" / "1" / "model.onnx").is_file(), "installed into the repository, kept there"


def test_a_bad_antispoof_from_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    repo = core_repository(tmp_path / "repo")
    process, _, log = launch(tmp_path, TRITON_REPO=str(repo), ANTISPOOF_FROM=str(tmp_path / "missing"))
    assert process.wait(60) != 0
    text = log.read_text()
    assert f"ANTISPOOF_FROM={tmp_path / 'missing'} is not a folder" in text and "did not become ready" in text
    assert not (repo / "antispoof").exists()

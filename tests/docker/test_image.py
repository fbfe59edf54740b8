"""Integration: Docker/Dockerfile is built and the image run, on a real Docker engine.

A session-scoped fixture builds the image once per run (`fr-triton:test`; the layers are cached,
so a rebuild after a source change only redoes the source and model layers) and reports the build
time and image size. Containers run with `--network host` and move their ports through the
environment Docker/start.sh reads. Where no engine answers (no `docker` binary, no permission,
no daemon) every test here skips and says why, unless FRTRITON_REQUIRE_DOCKER=1 (.ci/run sets it
where Docker is installed and an engine was reached or started): then they fail with the reason.
Where the base image can be neither found nor pulled, Docker/standin-base.sh builds a stand-in
from Debian packages first.

Other tests start their own containers with `run_container(image, extra_args=[...], env={...})`,
e.g. a folder mounted with `-v` and a setting with `-e`:

    def test_liveness(image: str, tmp_path: Path) -> None:
        with run_container(image, extra_args=["-v", f"{tmp_path}:/weights:ro"],
                           env={"ANTISPOOF_FROM": "/weights"}) as service:
            service.wait_ready()
            assert service.client().post("/liveness", ...).status_code == 200

(from another file in this folder: `from test_image import image, run_container`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
import pytest

from conftest import ROOT, dockerignored, free_ports
from settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.integration

IMAGE = os.environ.get("FRTRITON_TEST_IMAGE", "fr-triton:test")
DOCKERFILE = ROOT / "Docker" / "Dockerfile"
STANDIN = ROOT / "Docker" / "standin-base.sh"
LABEL = "fr-triton-test"  # on every container and volume these tests create, for cleanup
BUILD_TIMEOUT_S = 1800
READY_S = 60
STOP_S = 10
REQUIRE_DOCKER = "FRTRITON_REQUIRE_DOCKER"  # set (not "0"): a missing engine fails the tests instead of skipping


# --------------------------------------------------------------------------- the engine
def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@functools.cache
def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker binary on PATH (apt-get install docker.io; .ci/run does)"
    try:
        result = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s (dockerd hung?)"
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if "permission denied" in message.lower():
            return f"no permission to use the Docker engine ({message}); join the docker group or run as root"
        return f"no Docker engine answers ({message}); start one: dockerd --bridge=none --iptables=false"
    return None


def engine_verdict(problem: str | None, env: Mapping[str, str]) -> tuple[Literal["run", "skip", "fail"], str]:
    """What the tests do given why no engine can be used (None: one answers) and the environment."""
    if problem is None:
        return "run", ""
    if env.get(REQUIRE_DOCKER, "").strip() not in ("", "0"):
        return "fail", f"{problem} ({REQUIRE_DOCKER}={env[REQUIRE_DOCKER]}: Docker is installed, these must run)"
    return "skip", problem


def require_engine() -> None:
    verdict, reason = engine_verdict(engine_problem(), os.environ)
    if verdict == "fail":
        pytest.fail(reason, pytrace=False)
    if verdict == "skip":
        pytest.skip(reason)


def base_image() -> str:
    [line] = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("FROM ")]
    return line.split()[1]


def image_size_mb(tag: str) -> float:
    return int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout) / 1e6


@dataclass(frozen=True)
class Build:
    tag: str
    seconds: float
    size_mb: float
    base: str
    base_seconds: float | None  # Docker/standin-base.sh's time when it had to provide the base

    def report(self) -> str:
        base = f"stand-in {self.base} built in {self.base_seconds:.0f} s" if self.base_seconds else self.base
        return f"{self.tag}: built in {self.seconds:.1f} s, image size {self.size_mb:.0f} MB (base: {base})"


@functools.cache
def build_image(tag: str = IMAGE) -> Build:
    """Build Docker/Dockerfile once per process (Docker's layer cache makes a rebuild quick)."""
    base = base_image()
    base_seconds = None
    if docker("image", "inspect", base, check=False).returncode != 0:
        started = time.monotonic()
        standin = subprocess.run(["bash", str(STANDIN)], capture_output=True, text=True, timeout=1200)
        if standin.returncode != 0:
            pytest.skip(
                f"base image {base} is absent, cannot be pulled, and {STANDIN.name} failed:\n{standin.stderr[-2000:]}"
            )
        base_seconds = time.monotonic() - started
    started = time.monotonic()
    result = docker(
        "build", "--network", "host", "-t", tag, "-f", str(DOCKERFILE), str(ROOT), timeout=BUILD_TIMEOUT_S, check=False
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        pytest.fail(f"docker build failed after {seconds:.0f} s:\n{(result.stdout + result.stderr)[-5000:]}")
    return Build(tag, seconds, image_size_mb(tag), base, base_seconds)


class _Summary:
    """Repeats the build report in pytest's terminal summary (visible without -s)."""

    name = "fr-triton-docker-summary"

    def __init__(self, line: str) -> None:
        self.line = line

    def pytest_terminal_summary(self, terminalreporter) -> None:
        terminalreporter.section("docker image")
        terminalreporter.write_line(self.line)


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> str:
    """The tag of the image built from this tree's Docker/Dockerfile."""
    require_engine()
    build = build_image()
    print(f"\n[docker] {build.report()}")
    if not request.config.pluginmanager.has_plugin(_Summary.name):
        request.config.pluginmanager.register(_Summary(build.report()), _Summary.name)
    return build.tag


# --------------------------------------------------------------------------- containers
class Container:
    """A container of the image started by `run_container` (host network, ports from the environment)."""

    def __init__(self, container_id: str, name: str, ports: dict[str, int]) -> None:
        self.id = container_id
        self.name = name
        self.ports = ports
        self.ready_after_s: float | None = None
        self._key: str | None = None  # read once while running: later tests may have stopped it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['FASTAPI_PORT']}"

    def key(self) -> str:
        """The gallery's key, read the way the README says: `docker exec <container> cat /app/data/api_key`."""
        if self._key is None:
            self._key = docker("exec", self.name, "cat", "/app/data/api_key").stdout.strip()
        return self._key

    def client(self, timeout: float = 60) -> httpx.Client:
        """A client sending the container's generated API key (the open routes ignore it)."""
        return httpx.Client(base_url=self.url, timeout=timeout, headers={"X-API-Key": self.key()})

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.id).stdout.strip()

    def running(self) -> bool:
        result = docker("inspect", "-f", "{{.State.Running}}", self.id, check=False)
        return result.returncode == 0 and result.stdout.strip() == "true"

    def logs(self, tail: int = 60) -> str:
        result = docker("logs", "--tail", str(tail), self.id, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = READY_S) -> float:
        """Seconds from now until GET /ready answers 200 (fails with the container's log)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.running():
                raise AssertionError(
                    f"container {self.name} exited ({self.inspect('{{.State.ExitCode}}')}):\n{self.logs()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    self.ready_after_s = time.monotonic() - started
                    return self.ready_after_s
            time.sleep(0.5)
        raise AssertionError(f"{self.name}: /ready not 200 within {timeout:.0f} s:\n{self.logs()}")

    def stop(self, timeout: int = STOP_S) -> float:
        """`docker stop -t timeout`; seconds it took."""
        started = time.monotonic()
        docker("stop", "-t", str(timeout), self.id, timeout=timeout + 60)
        return time.monotonic() - started

    def remove(self) -> None:
        docker("rm", "-f", "-v", self.id, check=False)


@contextlib.contextmanager
def run_container(
    image: str, extra_args: list[str] | None = None, env: dict[str, str] | None = None
) -> Iterator[Container]:
    """`docker run -d --network host` on four free ports; the container is removed on exit.

    `extra_args` go before the image name (`-v`, `--health-interval=2s`, ...); `env` adds or
    overrides `-e` variables (the ports included).
    """
    ports = dict(
        zip(("FASTAPI_PORT", "TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"), free_ports(4), strict=True)
    )
    variables = {**{k: str(v) for k, v in ports.items()}, **(env or {})}
    ports = {k: int(variables[k]) for k in ports}
    name = f"{LABEL}-{uuid.uuid4().hex[:8]}"
    argv = ["run", "-d", "--network", "host", "--shm-size=256m", "--name", name, "--label", LABEL]
    for key, value in variables.items():
        argv += ["-e", f"{key}={value}"]
    container_id = docker(*argv, *(extra_args or []), image).stdout.strip()
    container = Container(container_id, name, ports)
    try:
        yield container
    finally:
        container.remove()


def in_image(image: str, script: str) -> subprocess.CompletedProcess[str]:
    """`sh -c script` in a throwaway container of the image."""
    return docker("run", "--rm", "--network", "host", "--entrypoint", "sh", image, "-c", script, check=False)


# --------------------------------------------------------------------------- the service
def container_path(image: str, host_default: Path) -> str:
    """Where a Settings default under the project root lies inside the image (WORKDIR /app)."""
    workdir = docker("image", "inspect", "-f", "{{.Config.WorkingDir}}", image).stdout.strip()
    return f"{workdir}/{host_default.relative_to(PROJECT_ROOT).as_posix()}"


@pytest.fixture(scope="module")
def gallery_volume() -> Iterator[str]:
    require_engine()
    name = f"{LABEL}-gallery-{uuid.uuid4().hex[:8]}"
    docker("volume", "create", "--label", LABEL, name)
    yield name
    docker("volume", "rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def data_mount(image: str, gallery_volume: str) -> list[str]:
    """`-v volume:<data dir>`: the folder of the default GALLERY_DB (settings.py) in the image."""
    db = container_path(image, Settings.model_fields["gallery_db"].default)
    return ["-v", f"{gallery_volume}:{db.rsplit('/', 1)[0]}"]


@pytest.fixture(scope="module")
def service(image: str, data_mount: list[str]) -> Iterator[Container]:
    """The image as `docker run` starts it, the gallery on a volume, health checked every 2 s."""
    with run_container(image, extra_args=["--health-interval=2s", *data_mount]) as container:
        container.wait_ready()
        yield container


@pytest.fixture(scope="module")
def lfw_pair(lfw_dir: Path) -> tuple[Path, Path]:
    """The first same-person pair of the LFW dev-test pairs (deep-funneled photos)."""
    for line in (lfw_dir / "pairs.tsv").read_text().splitlines()[1:]:
        path_a, path_b, same = line.split("\t")
        if same == "1":
            return lfw_dir / "deepfunneled" / path_a, lfw_dir / "deepfunneled" / path_b
    pytest.skip("no same-person pair in pairs.tsv")


@pytest.fixture(scope="module")
def enrolled(service: Container, lfw_pair: tuple[Path, Path]) -> tuple[str, httpx.Response]:
    """One person enrolled through the running service: (name, response)."""
    name = f"docker-test-{uuid.uuid4().hex[:8]}"
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in lfw_pair]
    with service.client() as client:
        return name, client.post("/identities", data={"name": name}, files=files)


def test_ready_within_a_minute(service: Container) -> None:
    print(f"\n[docker] {service.name}: /ready after {service.ready_after_s:.1f} s")
    assert service.ready_after_s is not None and service.ready_after_s < READY_S
    with service.client() as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/health").status_code == 200


def test_same_person_is_recognised(service: Container, lfw_pair: tuple[Path, Path]) -> None:
    path_a, path_b = lfw_pair
    files = {"image_a": (path_a.name, path_a.read_bytes()), "image_b": (path_b.name, path_b.read_bytes())}
    with service.client() as client:
        response = client.post("/face-similarity", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["same_person"] is True, response.json()


def test_enrollment_answers_201(enrolled: tuple[str, httpx.Response]) -> None:
    name, response = enrolled
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name and response.json()["num_faces"] >= 1


def test_demo_page_and_docs_are_served(service: Container) -> None:
    with service.client() as client:
        assert client.get("/ui/").status_code == 200
        assert client.get("/docs").status_code == 200


def test_healthcheck_of_the_image_turns_healthy(image: str, service: Container) -> None:
    # The container's check is the image's HEALTHCHECK command (only the timing is overridden).
    image_test = docker("image", "inspect", "-f", "{{json .Config.Healthcheck.Test}}", image).stdout.strip()
    assert "/ready" in image_test
    assert service.inspect("{{json .Config.Healthcheck.Test}}") == image_test
    deadline = time.monotonic() + 30
    while (status := service.inspect("{{.State.Health.Status}}")) != "healthy" and time.monotonic() < deadline:
        assert status in {"starting", "healthy"}, f"health {status}: {service.inspect('{{json .State.Health}}')}"
        time.sleep(0.5)
    assert status == "healthy", service.inspect("{{json .State.Health}}")


def test_docker_stop_ends_it_within_10_s_with_exit_code_0(
    service: Container, enrolled: tuple[str, httpx.Response]
) -> None:
    # `enrolled` first: the gallery test below needs a person enrolled while the service ran.
    seconds = service.stop()
    print(f"\n[docker] docker stop took {seconds:.1f} s")
    assert not service.running()
    assert seconds < STOP_S, f"docker stop took {seconds:.1f} s (SIGKILL after {STOP_S} s):\n{service.logs()}"
    assert service.inspect("{{.State.ExitCode}}") == "0", service.logs()
    assert "stopping on signal" in service.logs(200)


def test_gallery_volume_survives_a_new_container(
    image: str, service: Container, enrolled: tuple[str, httpx.Response], data_mount: list[str]
) -> None:
    name, response = enrolled
    assert response.status_code == 201, response.text
    key = service.key()
    if service.running():
        service.stop()
    service.remove()
    with run_container(image, extra_args=data_mount) as fresh:
        fresh.wait_ready()
        with fresh.client() as client:
            assert client.headers["X-API-Key"] == key, "the key lives on the gallery volume too"
            listed = client.get("/identities").json()
    assert name in [identity["name"] for identity in listed["identities"]], listed


# --------------------------------------------------------------------------- the image's contents
def test_image_holds_no_torch_no_tests_and_no_git(image: str) -> None:
    checks = [
        "python -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'",
        "! pip list 2>/dev/null | grep -i -E '^(torch|torchvision|pytest|ruff|insightface|playwright) '",
        "test ! -e /app/tests && test ! -e /app/.git && test ! -e /app/benchmarks && test ! -e /app/.ci",
        "test -z \"$(find /app \\( -name .git -o -name 'test_*.py' -o -name conftest.py \\) -print)\"",
        # Nor the installed packages' own test suites (the Dockerfile drops them; pip's are the base's).
        "site=$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
        ' && test -z "$(find $site -type d -name tests -not -path "$site/pip/*" -print)"'
        " && test ! -e $site/onnx/backend/test",
    ]
    result = in_image(image, " && ".join(checks))
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_holds_what_the_service_runs(image: str) -> None:
    checks = [
        "test -x /app/Docker/start.sh",
        "test -f /app/ui/index.html",
        "test -f /app/model_repository/model_info.json",
        "test -f /app/model_repository/face_detector/1/model.onnx",
        "test -f /app/model_repository/fr_model/1/model.onnx",
        # Only this Python's stub of the nvidia-pytriton wheel is left (Docker/prune_pytriton.py).
        'python -c \'import sys, importlib.util as u, pathlib as p; v="%d.%d" % sys.version_info[:2];'
        ' root=p.Path(u.find_spec("pytriton").submodule_search_locations[0]);'
        ' s=sorted(x.name for x in (root/"tritonserver"/"python_backend_stubs").iterdir()); sys.exit(s != [v])\'',
        "test ! -e /app/.venv && test ! -e /app/data",
    ]
    result = in_image(image, " && ".join(checks))
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_holds_exactly_the_context_dockerignore_keeps(image: str) -> None:
    # The static checks of tests/test_dockerfile.py read .dockerignore as Docker does: compare.
    kept = set()
    for dirpath, _dirs, files in os.walk(ROOT):
        for name in files:
            path = (Path(dirpath) / name).relative_to(ROOT).as_posix()
            if not dockerignored(path):
                kept.add(path)
    listing = in_image(image, "cd /app && find . \\( -type f -o -type l \\) | sed 's|^\\./||'")
    assert listing.returncode == 0, listing.stderr
    # The build adds the prepared model repository; nothing else.
    copied = {p for p in listing.stdout.split() if p == "model_repository/README.md" or "model_repository/" not in p}
    assert copied == kept, f"only in the image: {copied - kept}; only in the tree: {kept - copied}"

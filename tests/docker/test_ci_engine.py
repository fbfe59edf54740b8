""".ci/run's Docker engine set-up, and whether tests/docker/ skip or fail without an engine.

The shell functions are sourced from .ci/run and run against a fake `docker` (it prints what
a real one says: no daemon, a stale socket's connection refused, permission denied) and a
fake daemon (`dockerd-XXXXXXX`, a name of its own per test, which records its arguments and
brings the fake engine up), on a real stale Unix socket in a temporary folder. This machine's
own engine is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_image import REQUIRE_DOCKER, engine_verdict

from conftest import ROOT

CI_RUN = ROOT / ".ci" / "run"
NO_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
REFUSED = (
    "failed to connect to the docker API at unix:///var/run/docker.sock; check if the path is correct and if the"
    " daemon is running: dial unix /var/run/docker.sock: connect: connection refused"
)
PERMISSION = (
    "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock:"
    ' Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.47/info": dial unix /var/run/docker.sock: connect: permission denied'
)
OTHER = "Error response from daemon: client version 1.52 is too new. Maximum supported API version is 1.47"

FAKE_DOCKER = """#!/bin/sh
# `docker info`: answers once the fake daemon is up, else says $FAKE_DOCKER_ERROR on stderr
[ "$1" = info ] || exit 0
if [ -e "$FAKE_STATE/engine-up" ]; then echo "Server Version: fake"; exit 0; fi
echo "$FAKE_DOCKER_ERROR" >&2
exit 1
"""
FAKE_DOCKERD = """#!/bin/sh
# records how it was started; brings the fake engine up unless told to fail
echo "$@" > "$FAKE_STATE/dockerd-args"
[ -n "$FAKE_DOCKERD_FAILS" ] || touch "$FAKE_STATE/engine-up"
"""


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@dataclass
class Outcome:
    returncode: int  # of the function
    required: str  # FRTRITON_REQUIRE_DOCKER after it ("" when not exported)
    state: str  # engine_state
    stderr: str


class Machine:
    """A temporary PATH with the fakes, and a Docker socket path of its own (DOCKER_HOST)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bin = folder / "bin"
        self.bin.mkdir()
        self.state = folder / "state"
        self.state.mkdir()
        self.socket = folder / "docker.sock"
        self.dockerd = f"dockerd-{uuid.uuid4().hex[:7]}"  # 15 characters: all of it is the process's name
        executable(self.bin / "docker", FAKE_DOCKER)
        self.env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(folder),
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKERD": self.dockerd,
            "DOCKERD_LOG": str(folder / "dockerd.log"),
            "DOCKERD_WAIT_S": "30",  # the fake answers at once: the wait ends on the first answer
            "FAKE_STATE": str(self.state),
            "FAKE_DOCKER_ERROR": NO_DAEMON,
        }

    def install_dockerd(self, fails: bool = False) -> None:
        executable(self.bin / self.dockerd, FAKE_DOCKERD)
        if fails:
            self.env["FAKE_DOCKERD_FAILS"] = "1"
            self.env["DOCKERD_WAIT_S"] = "0"  # it never comes up: one probe, no waiting

    def stale_socket(self) -> None:
        """A Unix socket file nobody listens on any more, as a dead daemon leaves it."""
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(self.socket))
        listener.close()  # the file stays; connecting to it is refused
        assert self.socket.is_socket()

    def run(self, function: str) -> Outcome:
        script = (
            f'source "{CI_RUN}"; sudo_=""; {function}; rc=$?; '
            'printf "%s\\n%s\\n%s\\n" "$rc" "${FRTRITON_REQUIRE_DOCKER:-}" "$engine_state"'
        )
        done = subprocess.run(["bash", "-c", script], env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        rc, required, state = done.stdout.splitlines()[-3:]
        return Outcome(int(rc), required, state, done.stderr)

    @property
    def dockerd_args(self) -> str | None:
        path = self.state / "dockerd-args"
        return path.read_text().strip() if path.exists() else None


@pytest.fixture()
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


# --------------------------------------------------------------------------- classifying `docker info`
@pytest.mark.parametrize(
    ("message", "state"),
    [(NO_DAEMON, "no-daemon"), (REFUSED, "no-daemon"), (PERMISSION, "permission"), (OTHER, "unknown")],
    ids=["no-daemon", "connection-refused", "permission-denied", "other-error"],
)
def test_docker_info_failures_are_told_apart_by_what_docker_says(machine: Machine, message: str, state: str) -> None:
    machine.env["FAKE_DOCKER_ERROR"] = message
    outcome = machine.run("probe_engine")
    assert outcome.returncode == 1 and outcome.state == state


def test_an_engine_that_answers_is_ok_and_required(machine: Machine) -> None:
    (machine.state / "engine-up").touch()
    assert machine.run("probe_engine").state == "ok"
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required) == (0, "1")
    assert machine.dockerd_args is None  # nothing started


# --------------------------------------------------------------------------- what ensure_docker_engine does
@pytest.mark.parametrize("message", [NO_DAEMON, REFUSED], ids=["no-daemon", "connection-refused"])
def test_a_stale_socket_with_no_daemon_is_removed_and_a_daemon_started(machine: Machine, message: str) -> None:
    machine.install_dockerd()
    machine.stale_socket()
    machine.env["FAKE_DOCKER_ERROR"] = message
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required, outcome.state) == (0, "1", "ok"), outcome.stderr
    assert not machine.socket.exists()
    assert "removing the stale socket" in outcome.stderr
    assert machine.dockerd_args == f"--bridge=none --iptables=false --ip-masq=false -H unix://{machine.socket}"


def test_without_a_socket_a_daemon_is_started(machine: Machine) -> None:
    machine.install_dockerd()
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required, outcome.state) == (0, "1", "ok"), outcome.stderr
    assert "removing" not in outcome.stderr
    assert machine.dockerd_args is not None and machine.dockerd_args.startswith("--bridge=none --iptables=false")


def test_permission_denied_only_warns_and_leaves_the_socket(machine: Machine) -> None:
    machine.install_dockerd()
    machine.stale_socket()  # stands for the engine's socket this user may not use
    machine.env["FAKE_DOCKER_ERROR"] = PERMISSION
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required) == (0, "")  # the tests may skip
    assert "warning: the Docker engine refuses this user" in outcome.stderr
    assert machine.socket.is_socket() and machine.dockerd_args is None


def test_a_daemon_that_never_answers_is_an_error_and_the_tests_are_required(machine: Machine) -> None:
    machine.install_dockerd(fails=True)
    machine.stale_socket()
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required, outcome.state) == (1, "1", "no-daemon")
    assert "error: no Docker engine answers" in outcome.stderr and "Is the docker daemon running?" in outcome.stderr


def test_a_running_daemon_keeps_its_socket_and_is_not_started_twice(machine: Machine, tmp_path: Path) -> None:
    machine.install_dockerd(fails=True)
    machine.stale_socket()
    other = tmp_path / "elsewhere"
    other.mkdir()
    # a process named like the daemon, still starting up: `sleep` under the daemon's name (no child to leave behind)
    running = subprocess.Popen([shutil.copy(shutil.which("sleep"), other / machine.dockerd), "600"])
    try:
        outcome = machine.run("ensure_docker_engine")
    finally:
        running.terminate()
        running.wait()
    assert (outcome.returncode, outcome.required) == (1, "1")
    assert "runs but does not answer yet" in outcome.stderr and "starting" not in outcome.stderr
    assert machine.socket.is_socket()


def test_an_exited_daemon_not_yet_reaped_does_not_count_as_running(machine: Machine, tmp_path: Path) -> None:
    machine.install_dockerd()
    machine.stale_socket()
    other = tmp_path / "elsewhere"
    other.mkdir()
    dead = subprocess.Popen([executable(other / machine.dockerd, "#!/bin/sh\nexit 0\n")])
    os.waitid(os.P_PID, dead.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie: not reaped yet
    try:
        outcome = machine.run("ensure_docker_engine")
    finally:
        dead.wait()
    assert (outcome.returncode, outcome.required, outcome.state) == (0, "1", "ok"), outcome.stderr
    assert not machine.socket.exists() and machine.dockerd_args is not None


def test_an_engine_answering_with_another_error_is_reported_not_replaced(machine: Machine) -> None:
    machine.install_dockerd()
    machine.stale_socket()
    machine.env["FAKE_DOCKER_ERROR"] = OTHER
    outcome = machine.run("ensure_docker_engine")
    assert (outcome.returncode, outcome.required) == (1, "1")
    assert OTHER in outcome.stderr
    assert machine.socket.is_socket() and machine.dockerd_args is None


def test_a_docker_cli_without_a_daemon_program_warns_and_lets_the_tests_skip(machine: Machine) -> None:
    outcome = machine.run("ensure_docker_engine")  # no daemon program on PATH
    assert (outcome.returncode, outcome.required) == (0, "")
    assert f"warning: a docker CLI but no {machine.dockerd}" in outcome.stderr


# --------------------------------------------------------------------------- the whole script
FAKE_MAKE = """#!/bin/sh
# `make test`: records the requirement it was given, exits as told
echo "${FRTRITON_REQUIRE_DOCKER:-}" > "$FAKE_STATE/make-saw"
exit "${FAKE_MAKE_STATUS:-0}"
"""
FAKE_APT = """#!/bin/sh
echo "$@" >> "$FAKE_STATE/apt-get"
exit 1
"""


def fake_ci_tools(machine: Machine) -> None:
    """What .ci/run installs, present (so nothing is installed), and a `make` that runs no tests."""
    for tool in ("chromium", "debootstrap", "docker-compose"):
        executable(machine.bin / tool, "#!/bin/sh\nexit 0\n")
    executable(machine.bin / "apt-get", FAKE_APT)
    executable(machine.bin / "make", FAKE_MAKE)


@pytest.mark.parametrize("tests_status", [0, 2], ids=["tests-pass", "tests-fail"])
def test_ci_fails_with_a_clear_message_when_docker_is_installed_and_no_engine_answers(
    machine: Machine, tests_status: int
) -> None:
    machine.install_dockerd(fails=True)
    machine.stale_socket()
    fake_ci_tools(machine)
    machine.env["FAKE_MAKE_STATUS"] = str(tests_status)
    done = subprocess.run(["bash", str(CI_RUN)], env=machine.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == (tests_status or 1), done.stderr
    assert "error: CI fails: Docker is installed but no engine answers (Cannot connect" in done.stderr
    assert (machine.state / "make-saw").read_text().strip() == "1"  # the tests ran, told to fail without it
    assert not (machine.state / "apt-get").exists()


def test_ci_passes_the_requirement_on_when_the_engine_answers(machine: Machine) -> None:
    machine.install_dockerd()
    fake_ci_tools(machine)
    done = subprocess.run(["bash", str(CI_RUN)], env=machine.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr and "warning" not in done.stderr
    assert (machine.state / "make-saw").read_text().strip() == "1"


# --------------------------------------------------------------------------- skip or fail
def test_an_engine_that_answers_runs_the_tests_whatever_the_environment() -> None:
    assert engine_verdict(None, {})[0] == "run"
    assert engine_verdict(None, {REQUIRE_DOCKER: "1"})[0] == "run"


@pytest.mark.parametrize("env", [{}, {REQUIRE_DOCKER: ""}, {REQUIRE_DOCKER: "0"}], ids=["unset", "empty", "zero"])
def test_without_the_requirement_a_missing_engine_skips_with_its_reason(env: dict[str, str]) -> None:
    assert engine_verdict("no Docker engine answers (Cannot connect ...)", env) == (
        "skip", "no Docker engine answers (Cannot connect ...)",
    )


def test_with_the_requirement_a_missing_engine_fails_with_its_reason() -> None:
    verdict, reason = engine_verdict("no Docker engine answers (Cannot connect ...)", {REQUIRE_DOCKER: "1"})
    assert verdict == "fail"
    assert "no Docker engine answers (Cannot connect ...)" in reason and f"{REQUIRE_DOCKER}=1" in reason

"""The test-port registry (conftest.PortRegistry) and the start-again-on-a-clash helper.

A flaky suite had Triton given the same port for HTTP and gRPC; these pin down what the
registry promises: distinct ports, never handed out twice, none that is taken or claimed by
another session, and a bounded retry when a server still loses a port race.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PORTS, PortRegistry, TritonProcess, port_clash, port_range, start_with_retry


def test_ports_come_in_distinct_sets_and_are_never_handed_out_twice(tmp_path: Path) -> None:
    registry = PortRegistry(tmp_path / "locks")
    sets = [registry.allocate(3) for _ in range(40)]
    assert all(len(set(ports)) == 3 for ports in sets)
    every = [port for ports in sets for port in ports]
    assert len(set(every)) == len(every) == 120
    assert all(port in registry.ports for port in every)
    registry.close()


def test_ports_are_chosen_outside_the_kernels_ephemeral_range(tmp_path: Path) -> None:
    ephemeral = tmp_path / "ip_local_port_range"
    ephemeral.write_text("32768\t60999\n")
    assert port_range(ephemeral) == range(20000, 32768)  # below it: Linux's default
    ephemeral.write_text("10000 40000\n")
    assert port_range(ephemeral) == range(40001, 65536)  # above it, when there is no room below
    ephemeral.write_text("1024 65000\n")
    assert port_range(ephemeral) == range(10000, 65536)  # no room outside: the registry alone
    assert port_range(tmp_path / "missing") == range(20000, 32768)


def test_a_port_in_use_is_skipped_and_running_out_is_an_error_not_a_repeat(tmp_path: Path) -> None:
    candidates = PortRegistry(tmp_path / "a").allocate(3)  # three ports free right now
    registry = PortRegistry(tmp_path / "b", ports=candidates)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", candidates[0]))
        busy.listen()
        assert sorted(registry.allocate(2)) == sorted(candidates[1:])
        with pytest.raises(RuntimeError, match="no 1 free ports"):
            registry.allocate(1, max_tries=50)


def test_a_port_claimed_by_another_session_is_not_handed_out_until_it_lets_go(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    [port] = PortRegistry(tmp_path / "probe").allocate(1)
    holder = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from conftest import PortRegistry
        registry = PortRegistry(Path({str(locks)!r}), ports=[{port}])
        print(registry.allocate(1)[0], flush=True)
        sys.stdin.read()  # holds the claim until told to stop
    """)
    other = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == str(port)
        with pytest.raises(RuntimeError):
            PortRegistry(locks, ports=[port]).allocate(1, max_tries=20)
    finally:
        other.communicate("")  # the other session ends: its claims end with it
    assert PortRegistry(locks, ports=[port]).allocate(1) == [port]


def test_a_triton_gets_three_distinct_ports_unlike_any_other_server_of_the_session(tmp_path: Path) -> None:
    servers = [TritonProcess(tmp_path, tmp_path / "triton.log") for _ in range(5)]
    ports = [(s.settings.triton_http_port, s.settings.triton_grpc_port, s.settings.triton_metrics_port)
             for s in servers]
    flat = [port for triple in ports for port in triple]
    assert len(set(flat)) == len(flat)
    assert set(flat) <= PORTS.handed_out


@pytest.mark.parametrize("log, clash", [
    ('E1201 main.cc:257] "failed to start HTTP service: Unavailable - Socket \'0.0.0.0:23456\' already in use "', True),
    ("The server cannot listen to HTTP requests and GRPC requests at the same address and port 0.0.0.0:8000", True),
    ("ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 3000): address already in use",
     True),
    ("E1201 model_repository_manager.cc] failed to load 'face_detector'", False),
])
def test_port_clashes_are_told_apart_from_other_start_failures(log: str, clash: bool) -> None:
    assert port_clash(log) is clash


def test_a_start_that_loses_its_port_is_retried_on_new_ports_a_bounded_number_of_times() -> None:
    outcomes = iter(["Socket '0.0.0.0:1' already in use", "address already in use", None])
    moves = []
    start_with_retry(lambda: next(outcomes), lambda: moves.append("moved"))
    assert moves == ["moved", "moved"]

    moves.clear()
    with pytest.raises(RuntimeError, match="attempt 3"):
        start_with_retry(lambda: "already in use", lambda: moves.append("moved"), attempts=3)
    assert moves == ["moved", "moved"]

    moves.clear()
    with pytest.raises(RuntimeError, match="attempt 1"):  # any other failure is not retried
        start_with_retry(lambda: "failed to load 'face_detector'", lambda: moves.append("moved"))
    assert moves == []

"""benchmarks/cpu_split.py: which Triton counts as this machine's, and when an overhead is computed (unit)."""

from __future__ import annotations

import socket
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import cpu_split  # noqa: E402

# TEST-NET-3 (RFC 5737): never an address of this machine.
FOREIGN = "203.0.113.7"


def own_address() -> str:
    """An address of this machine's own interface (the source of a route to the outside; no packet sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((FOREIGN, 9))
        except OSError:
            pytest.skip("no route off loopback on this machine")
        return probe.getsockname()[0]


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("localhost", True), (None, True), (FOREIGN, False), ("no-such-host.invalid", False)],
)
def test_is_local_host_by_address(host: str | None, local: bool) -> None:
    assert cpu_split.is_local_host(host) is local


def test_a_triton_on_this_machines_own_interface_counts_as_local() -> None:
    assert cpu_split.is_local_host(own_address())


def snapshot(cpu: dict[str, float], ort_cpu_s: float, runs: int) -> cpu_split.Snapshot:
    counters = {"cpu_seconds": ort_cpu_s, "wall_seconds": ort_cpu_s, "runs": runs}
    return cpu_split.Snapshot(cpu, onnxruntime={"m": counters})


def test_overhead_is_all_cpu_minus_onnxruntime_when_triton_is_counted() -> None:
    before = snapshot({"api": 0.0, "tritonserver": 0.0, "stub m": 0.0}, 0.0, 0)
    after = snapshot({"api": 1.0, "tritonserver": 0.5, "stub m": 2.5}, 2.0, 100)
    split = cpu_split.CpuSplit.delta(before, after, images=100)
    assert split["total_cpu_ms_per_image"] == pytest.approx(40.0)
    assert split["overhead_cpu_ms_per_image"] == pytest.approx(20.0)


def test_no_overhead_when_only_the_api_is_on_this_machine() -> None:
    before, after = snapshot({"api": 0.0}, 0.0, 0), snapshot({"api": 1.0}, 2.0, 100)
    split = cpu_split.CpuSplit.delta(before, after, images=100)
    assert split["overhead_cpu_ms_per_image"] is None
    assert "n/a" in cpu_split.format_split(split)

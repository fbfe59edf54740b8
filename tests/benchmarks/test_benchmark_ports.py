"""benchmarks/common.py: the ports a benchmark gives the services it boots (unit)."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402


def test_free_ports_are_distinct_within_one_call() -> None:
    ports = common.free_ports(4)
    assert len(set(ports)) == 4


def test_free_ports_never_hands_out_a_port_twice_in_one_process() -> None:
    first, second = common.free_ports(4), common.free_ports(4)
    assert not set(first) & set(second)


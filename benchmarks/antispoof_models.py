"""Per-face latency of the served anti-spoofing layouts on ONNX Runtime (CPU), to choose one for Triton.

    python benchmarks/antispoof_models.py [--onnx DIR | --from CHECKPOINTS] [--threads 1 2] [--batches 1 4 16]

DIR is an output folder of `convert_to_onnx.py antispoof` (the raw exported graphs); without it the
checkpoints (default ../shared/models/antispoof) are converted into a temporary folder first.
Every layout is proven equal to the raw graphs (probabilities within 1e-5) before it is timed.

Layouts, all fed the same M x N crops:

- raw, 2 models:    float32 NCHW logits graphs as exported; the API would convert, transpose and softmax
                    (that work is timed too, in numpy);
- 2 models:         two served graphs (uint8 NHWC BGR in, probabilities out), run one after the other;
- 2 models ||:      the same two, run concurrently from two threads (Triton runs two models at once
                    when the API sends both requests together); threads = per session;
- 1 model stacked:  one served graph, input (N, 2, 80, 80, 3) -> (N, 2, 3);
- 1 model 2 inputs: one served graph, inputs image_0 / image_1, each (N, 80, 80, 3);
- ... no Max-PRelu: the stacked graph without the PRelu -> Max rewrite.

Prints ms per face over `--repeats` calls per batch size: median and fastest wall time, and median
CPU time of the process (the work, robust to other load); the layouts' calls are interleaved so
background load hits them alike.
ONNX Runtime sessions are set up like the service's (intra-op threads as given, no spinning).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_tools.antispoof_graph import SERVED_INPUT, SERVED_OUTPUT, serve_combined, serve_single, session  # noqa: E402
from vision.antispoof import softmax  # noqa: E402

DEFAULT_CHECKPOINTS = ROOT.parent / "shared" / "models" / "antispoof"
CROP = (80, 80, 3)
WARMUP = 5


def raw_graphs(args: argparse.Namespace, scratch: Path) -> list[onnx.ModelProto]:
    folder = args.onnx
    if folder is None:
        from model_tools.antispoof_export import convert

        folder = scratch / "onnx"
        convert(args.source, folder, progress=False)
    import json

    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    return [onnx.load(str(Path(folder) / entry["file"])) for entry in manifest["models"]]


def layouts(raws: list[onnx.ModelProto], threads: int) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> run(crops (M, N, 80, 80, 3) uint8) -> (M, N, 3) probabilities."""
    raw_sessions = [session(raw, threads) for raw in raws]
    singles = [session(serve_single(raw), threads) for raw in raws]
    parallel = [session(serve_single(raw), 1) for raw in raws]
    stacked = session(serve_combined(raws), threads)
    two_inputs = session(serve_combined(raws, stacked=False), threads)
    slow_prelu = session(serve_combined(raws, fast_prelu=False), threads)
    pool = ThreadPoolExecutor(len(raws))

    def raw(crops: np.ndarray) -> np.ndarray:
        out = []
        for run, batch in zip(raw_sessions, crops, strict=True):
            nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
            out.append(softmax(run.run(None, {run.get_inputs()[0].name: nchw})[0]))
        return np.stack(out)

    def separate(crops: np.ndarray) -> np.ndarray:
        return np.stack([run.run([SERVED_OUTPUT], {SERVED_INPUT: batch})[0] for run, batch in zip(singles, crops,
                                                                                                   strict=True)])

    def concurrent(crops: np.ndarray) -> np.ndarray:
        futures = [pool.submit(run.run, [SERVED_OUTPUT], {SERVED_INPUT: batch})
                   for run, batch in zip(parallel, crops, strict=True)]
        return np.stack([future.result()[0] for future in futures])

    def one(run) -> Callable[[np.ndarray], np.ndarray]:
        def call(crops: np.ndarray) -> np.ndarray:
            feed = {SERVED_INPUT: np.ascontiguousarray(crops.transpose(1, 0, 2, 3, 4))}
            return run.run([SERVED_OUTPUT], feed)[0].transpose(1, 0, 2)

        return call

    def inputs(crops: np.ndarray) -> np.ndarray:
        feed = {f"{SERVED_INPUT}_{index}": batch for index, batch in enumerate(crops)}
        return two_inputs.run([SERVED_OUTPUT], feed)[0].transpose(1, 0, 2)

    return {
        "raw float, 2 models": raw,
        "2 models": separate,
        "2 models ||" + ("" if threads == 1 else " (1 thread each)"): concurrent,
        "1 model stacked": one(stacked),
        "1 model 2 inputs": inputs,
        "1 model stacked, no Max-PRelu": one(slow_prelu),
    }


def per_face_ms(runs: dict[str, Callable[[np.ndarray], np.ndarray]], crops: np.ndarray, repeats: int,
                rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
    """name -> (median wall, fastest wall, median CPU) ms per face.

    Calls are interleaved, in a new random order each round, so every layout sees the same
    background load (the machines here are shared). CPU time (all threads of this process) is
    the work a call costs, whatever else the machine runs.
    """
    for run in runs.values():
        for _ in range(WARMUP):
            run(crops)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for _ in range(repeats):
        for index in rng.permutation(len(names)):
            name = names[index]
            start, start_cpu = time.perf_counter(), time.process_time()
            runs[name](crops)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    scale = 1000 / crops.shape[1]
    return {name: (statistics.median(wall[name]) * scale, min(wall[name]) * scale, statistics.median(cpu[name]) * scale)
            for name in runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, help="output folder of `convert_to_onnx.py antispoof`")
    parser.add_argument("--from", dest="source", default=str(DEFAULT_CHECKPOINTS), help="checkpoints to convert")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        raws = raw_graphs(args, Path(scratch))
    models = len(raws)
    print(f"{models} networks; ms per face over {args.repeats} calls: median wall, fastest wall, median CPU")
    for threads in args.threads:
        runs = layouts(raws, threads)
        check = rng.integers(0, 256, (models, 3, *CROP), dtype=np.uint8)
        expected = runs["raw float, 2 models"](check)
        for name, run in runs.items():
            difference = float(np.abs(run(check) - expected).max())
            if difference > 1e-5:
                raise SystemExit(f"{name} differs from the raw graphs by {difference:.3g}")
        title = f"intra-op threads = {threads}"
        print("\n" + f"{title:34}" + "".join(f"{'batch ' + str(b):>24}" for b in args.batches))
        results = [per_face_ms(runs, rng.integers(0, 256, (models, batch, *CROP), dtype=np.uint8), args.repeats, rng)
                   for batch in args.batches]
        for name in runs:
            cells = [f"{median:6.2f} {fastest:6.2f} {cpu_ms:6.2f}" for median, fastest, cpu_ms in
                     (result[name] for result in results)]
            print(f"{name:34}" + "".join(f"{cell:>24}" for cell in cells), flush=True)
    pixels = models * int(np.prod(CROP))
    print(f"\nbytes per face on the wire: uint8 {pixels}, float32 {4 * pixels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

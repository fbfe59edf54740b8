"""Enrollment-quality numbers on labelled photos: how many the ENROLL_* thresholds refuse.

    python benchmarks/enroll_quality.py [--url http://127.0.0.1:3000] [--lfw DIR]
        [--faces benchmarks/out/lfw_faces.npz] [--remeasure]

Faces come from the running service's /embedding (`make run`), once: every LFW dev-test photo
of both folders as it is and degraded (Gaussian blur sigma 3; shrunk to a quarter, faces of
~20-35 px), its main face's landmarks, embedding and crop sharpness (`measure`, on the same
aligned crop the service embeds), stored in --faces and reused from there (also by
`quality_reject_curve.py`, which grounds the thresholds in recognition). The quality numbers
(`quality.face_quality_from`: size, sharpness, yaw, pitch, roll) are computed with the current
code. Prints, per set, how many photos the configured thresholds (Settings:
ENROLL_MIN_FACE_SIZE, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW, ENROLL_MAX_PITCH) refuse and why,
and percentiles of each number; writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.decode import decode_image  # noqa: E402
from settings import Settings  # noqa: E402
from vision.alignment import align_faces  # noqa: E402
from vision.quality import FaceQuality, QualityLimits, face_quality_from, quality_problem, sharpness  # noqa: E402

FOLDERS = ("deepfunneled", "original")
LFW = Path(__file__).resolve().parents[2] / "shared/datasets/lfw-devtest"

VARIANTS = ("as is", "blurred (sigma 3)", "quarter size")


def variant(data: bytes, kind: str) -> bytes:
    if kind == "as is":
        return data
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if kind.startswith("blurred"):
        pixels = cv2.GaussianBlur(np.asarray(image), (0, 0), 3)
        image = Image.fromarray(pixels)
    else:
        image = image.resize((max(16, image.width // 4), max(16, image.height // 4)), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def measure(client: httpx.Client, data: bytes) -> dict | None:
    """The main face of one photo as enrollment sees it, or None without a face.

    `/embedding` picks the main face as enrollment does; the aligned crop is rebuilt here from
    its landmarks. -> {"landmarks": (5, 2), "embedding": (D,), "sharpness": float}.
    """
    answer = client.post("/embedding", files={"image": ("p.jpg", data)})
    if answer.status_code == 422 and "no face" in answer.text:
        return None
    answer.raise_for_status()
    body = answer.json()
    landmarks = np.array(body["face"]["landmarks"], np.float64)
    image = decode_image(data, max_pixels=40_000_000)
    crop = align_faces(image, landmarks[None].astype(np.float32))[0]
    return {"landmarks": landmarks, "embedding": np.array(body["embedding"], np.float32), "sharpness": sharpness(crop)}


def measure_folder(client: httpx.Client, pool: ThreadPoolExecutor, root: Path, kind: str) -> dict[str, np.ndarray]:
    """Every photo under root (sorted relative paths) -> arrays; NaN rows where no face was found."""
    paths = sorted(root.glob("*/*.jpg"))
    found = list(pool.map(lambda p: measure(client, variant(p.read_bytes(), kind)), paths))
    dim = next(len(f["embedding"]) for f in found if f)
    blank = {"landmarks": np.full((5, 2), np.nan), "embedding": np.full(dim, np.nan), "sharpness": np.nan}
    rows = [f or blank for f in found]
    return {
        "names": np.array([str(p.relative_to(root)) for p in paths]),
        "landmarks": np.stack([r["landmarks"] for r in rows]),
        "embedding": np.stack([r["embedding"] for r in rows]).astype(np.float32),
        "sharpness": np.array([r["sharpness"] for r in rows]),
    }


def measure_all(url: str, lfw: Path, out: Path) -> None:
    """Both folders, every variant, through the service at `url` -> one .npz at `out`."""
    arrays = {}
    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        for folder in FOLDERS:
            for kind in VARIANTS:
                print(f"measuring {folder} / {kind}", flush=True)
                for key, value in measure_folder(client, pool, lfw / folder, kind).items():
                    arrays[f"{folder}|{kind}|{key}"] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


def load_faces(path: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(folder, variant) -> {"names", "landmarks", "embedding", "sharpness"} as `measure_all` stored them."""
    faces: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            folder, kind, name = key.split("|")
            faces.setdefault((folder, kind), {})[name] = data[key]
    return faces


def faces_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the running service (only to measure)")
    parser.add_argument("--lfw", type=Path, default=LFW)
    parser.add_argument("--faces", type=Path, default=Path("benchmarks/out/lfw_faces.npz"))
    parser.add_argument("--remeasure", action="store_true", help="measure again even if --faces exists")


def read_faces(args: argparse.Namespace) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    if args.remeasure or not args.faces.is_file():
        measure_all(args.url, args.lfw, args.faces)
    return load_faces(args.faces)


def limits_of(settings: Settings) -> QualityLimits:
    return QualityLimits(settings.enroll_min_face_size, settings.enroll_min_sharpness,
                         settings.enroll_max_yaw, settings.enroll_max_pitch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    faces_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/enroll_quality.json"))
    args = parser.parse_args(argv)
    limits = limits_of(Settings())
    report = {}
    for (folder, kind), entry in read_faces(args).items():
        found = [face_quality_from(points, float(sharp)) for points, sharp in
                 zip(entry["landmarks"], entry["sharpness"], strict=True) if np.isfinite(points).all()]
        rejected = [quality_problem(q, limits) for q in found]
        reasons: dict[str, int] = {}
        for reason in filter(None, rejected):
            key = reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        stats = {
            name: {f"p{p}": round(float(np.percentile([getattr(q, name) for q in found], p)), 3)
                   for p in (0.5, 1, 5, 50, 95, 99, 99.5)}
            for name in FaceQuality.__dataclass_fields__
        }
        refused = sum(map(bool, rejected))
        examples = [f"{n}: {r}" for n, r in zip(entry["names"][np.isfinite(entry["sharpness"])], rejected,
                                                 strict=True) if r]
        entry_report = {"photos": len(entry["names"]), "with_face": len(found), "rejected": refused,
                        "reasons": reasons, "percentiles": stats, "rejected_photos": examples}
        report[f"{folder} / {kind}"] = entry_report
        print(f"\n{folder} / {kind}: {len(found)} faces of {len(entry['names'])} photos; "
              f"rejected {refused} ({100 * refused / max(len(found), 1):.2f} %) {reasons}")
        for name, values in stats.items():
            print(f"  {name:<9} " + "  ".join(f"{k} {v:>8.2f}" for k, v in values.items()))
        if kind == VARIANTS[0]:
            for line in examples:
                print(f"    {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure enrollment-quality numbers on labelled photos, to choose the ENROLL_* thresholds.

    python benchmarks/enroll_quality.py [--url http://127.0.0.1:3000] [--lfw DIR] [--limit N]

Needs the service running (`make run`): faces come from its /detect; the quality numbers
(`quality.face_quality`: size, sharpness, yaw, pitch) are computed here on the same aligned
crop the service embeds. For every LFW dev-test photo (both folders) it measures the main
face as it is, and the same photo degraded: Gaussian blur (sigma 3) and shrunk to a quarter
(faces of ~25-40 px). Prints percentiles per set and how many of each set the configured
thresholds (Settings: ENROLL_MIN_FACE_SIZE, ENROLL_MIN_SHARPNESS, ENROLL_MAX_YAW,
ENROLL_MAX_PITCH) reject, and writes JSON.
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
from vision.detections import primary_face  # noqa: E402
from vision.quality import FaceQuality, QualityLimits, face_quality, quality_problem  # noqa: E402

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
    answer = client.post("/detect", files={"image": ("p.jpg", data)})
    if answer.status_code != 200 or not answer.json()["faces"]:
        return None
    faces = answer.json()["faces"]
    image = decode_image(data, max_pixels=40_000_000)
    boxes = np.array([f["bbox"] for f in faces], np.float32)
    landmarks = np.array([f["landmarks"] for f in faces], np.float32)
    main = primary_face(boxes, image.shape[:2])
    crop = align_faces(image, landmarks[main : main + 1])[0]
    return face_quality(landmarks[main], crop).as_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--lfw", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/lfw-devtest")
    parser.add_argument("--limit", type=int, default=0, help="photos per folder (0: all)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/enroll_quality.json"))
    args = parser.parse_args(argv)
    settings = Settings()
    limits = QualityLimits(settings.enroll_min_face_size, settings.enroll_min_sharpness,
                           settings.enroll_max_yaw, settings.enroll_max_pitch)
    report = {}
    with httpx.Client(base_url=args.url, timeout=60) as client, ThreadPoolExecutor(4) as pool:
        for folder in ("deepfunneled", "original"):
            paths = sorted((args.lfw / folder).glob("*/*.jpg"))
            paths = paths[: args.limit] if args.limit else paths
            originals = [p.read_bytes() for p in paths]
            for kind in VARIANTS:
                found = [q for q in pool.map(lambda d, k=kind: measure(client, variant(d, k)), originals) if q]
                rejected = [quality_problem(FaceQuality(**q), limits) for q in found]
                reasons: dict[str, int] = {}
                for reason in filter(None, rejected):
                    key = reason.split(" (")[0]
                    reasons[key] = reasons.get(key, 0) + 1
                stats = {
                    name: {f"p{p}": round(float(np.percentile([q[name] for q in found], p)), 3)
                           for p in (0.5, 1, 5, 50, 95, 99, 99.5)}
                    for name in ("size", "sharpness", "yaw", "pitch")
                }
                entry = {"photos": len(paths), "with_face": len(found), "rejected": sum(map(bool, rejected)),
                         "reasons": reasons, "percentiles": stats}
                report[f"{folder} / {kind}"] = entry
                print(f"\n{folder} / {kind}: {len(found)} faces of {len(paths)} photos; "
                      f"rejected {entry['rejected']} ({100 * entry['rejected'] / max(len(found), 1):.1f} %) {reasons}")
                for name, values in stats.items():
                    print(f"  {name:<9} " + "  ".join(f"{k} {v:>8.3f}" for k, v in values.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

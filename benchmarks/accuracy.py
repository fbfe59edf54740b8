"""Face-verification accuracy of a running service on labelled pairs.

    python benchmarks/accuracy.py --pairs PAIRS --root DIR [--url http://127.0.0.1:3000] [--json OUT]

PAIRS is a tab-separated file `path_a  path_b  same [fold]` (a header line is
skipped; paths relative to DIR), or LFW's own `pairs.txt` / `pairsDevTest.txt`
(`name n1 n2` for a same pair, `name1 n1 name2 n2` for a different one, paths
DIR/<name>/<name>_<nnnn>.jpg). Every pair goes through `POST /face-similarity`.
A pair where the service finds no face counts as a "different" answer.

Reports the accuracy at the best single threshold (and that threshold), 10-fold
cross-validated accuracy when folds exist, accuracy at the service's configured
threshold, TAR at FAR 1e-2 and 1e-3, ROC AUC and the number of pairs without a
face; prints a table, writes JSON and a ROC curve PNG next to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

NO_FACE_SIMILARITY = -1.0  # a missed face answers "different"


@dataclass(frozen=True)
class Pair:
    path_a: Path
    path_b: Path
    same: bool
    fold: int | None = None


def read_pairs(pairs_file: Path, root: Path) -> list[Pair]:
    lines = [line.rstrip("\n") for line in pairs_file.read_text().splitlines() if line.strip()]
    first = lines[0].split()
    if all(token.isdigit() for token in first):  # LFW pairs.txt: "folds per_fold" or "count" header
        per_fold = int(first[-1])
        pairs = []
        for index, line in enumerate(lines[1:]):
            fields = line.split()
            fold = index // (2 * per_fold) if len(first) == 2 else None
            if len(fields) == 3:
                name, a, b = fields
                pairs.append(Pair(_lfw_path(root, name, a), _lfw_path(root, name, b), True, fold))
            else:
                name_a, a, name_b, b = fields
                pairs.append(Pair(_lfw_path(root, name_a, a), _lfw_path(root, name_b, b), False, fold))
        return pairs
    pairs = []
    for row in csv.reader(lines, delimiter="\t"):
        if row[2].strip() not in ("0", "1", "true", "false", "True", "False"):
            continue  # header
        fold = int(row[3]) if len(row) > 3 and row[3].strip() else None
        pairs.append(Pair(root / row[0], root / row[1], row[2].strip().lower() in ("1", "true"), fold))
    return pairs


def _lfw_path(root: Path, name: str, number: str) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def roc(similarities: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true accept rates at every threshold (descending), and those thresholds."""
    order = np.argsort(-similarities, kind="stable")
    sims, labels = similarities[order], same[order]
    tp = np.cumsum(labels)
    fp = np.cumsum(~labels)
    distinct = np.r_[np.nonzero(np.diff(sims))[0], sims.size - 1]
    tar = np.r_[0.0, tp[distinct] / max(labels.sum(), 1)]
    far = np.r_[0.0, fp[distinct] / max((~labels).sum(), 1)]
    return far, tar, np.r_[np.inf, sims[distinct]]


def best_threshold(similarities: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of `similarity >= threshold`; midpoint of the gap."""
    values = np.unique(similarities)
    candidates = np.r_[values[0] - 1e-6, (values[:-1] + values[1:]) / 2, values[-1] + 1e-6]
    accuracies = [np.mean((similarities >= t) == same) for t in candidates]
    best = int(np.argmax(accuracies))
    return float(candidates[best]), float(accuracies[best])


def tar_at_far(far: np.ndarray, tar: np.ndarray, target: float) -> float:
    allowed = far <= target
    return float(tar[allowed].max()) if allowed.any() else 0.0


def evaluate(similarities: np.ndarray, same: np.ndarray, folds: np.ndarray | None, configured: float | None) -> dict:
    far, tar, _ = roc(similarities, same)
    threshold, accuracy = best_threshold(similarities, same)
    report = {
        "pairs": int(same.size),
        "best_accuracy": accuracy,
        "best_threshold": threshold,
        "tar_at_far_1e-2": tar_at_far(far, tar, 1e-2),
        "tar_at_far_1e-3": tar_at_far(far, tar, 1e-3),
        "roc_auc": float(np.trapezoid(tar, far) if hasattr(np, "trapezoid") else np.trapz(tar, far)),
    }
    if configured is not None:
        report["configured_threshold"] = configured
        report["accuracy_at_configured_threshold"] = float(np.mean((similarities >= configured) == same))
    if folds is not None and len(np.unique(folds)) > 1:
        scores = []
        for fold in np.unique(folds):
            train, test = folds != fold, folds == fold
            t, _ = best_threshold(similarities[train], same[train])
            scores.append(np.mean((similarities[test] >= t) == same[test]))
        report["cv_accuracy_mean"] = float(np.mean(scores))
        report["cv_accuracy_std"] = float(np.std(scores))
    return report


def query(client: httpx.Client, pair: Pair) -> tuple[float, float | None, str | None]:
    """(similarity, service threshold, no-face detail) for one pair."""
    files = {
        "image_a": (pair.path_a.name, pair.path_a.read_bytes()),
        "image_b": (pair.path_b.name, pair.path_b.read_bytes()),
    }
    response = client.post("/face-similarity", files=files)
    if response.status_code == 422 and "no face" in response.text:
        return NO_FACE_SIMILARITY, None, response.json()["detail"]
    response.raise_for_status()
    body = response.json()
    return float(body["similarity"]), float(body["threshold"]), None


def plot_roc(similarities: np.ndarray, same: np.ndarray, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    far, tar, thresholds = roc(similarities, same)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot(np.maximum(far, 1e-4), tar, label=f"ROC (AUC {report['roc_auc']:.4f})")
    point = report.get("configured_threshold", report["best_threshold"])
    index = int(np.argmin(np.abs(thresholds - point)))
    ax.scatter([max(far[index], 1e-4)], [tar[index]], color="red", zorder=3, label=f"threshold {point:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{report['pairs']} pairs, best accuracy {report['best_accuracy']:.4f}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--json", type=Path, help="write the report here (and the ROC PNG beside it)")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    pairs = read_pairs(args.pairs, args.root)
    missing = [p for p in pairs if not (p.path_a.is_file() and p.path_b.is_file())]
    pairs = [p for p in pairs if p not in missing]
    from tqdm import tqdm

    with httpx.Client(base_url=args.url, timeout=120) as client, ThreadPoolExecutor(args.concurrency) as pool:
        results = list(tqdm(pool.map(lambda p: query(client, p), pairs), total=len(pairs), desc="pairs"))
    similarities = np.array([r[0] for r in results])
    same = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs]) if all(p.fold is not None for p in pairs) else None
    configured = next((r[1] for r in results if r[1] is not None), None)
    report = evaluate(similarities, same, folds, configured)
    report["pairs_skipped_missing_files"] = len(missing)
    report["pairs_without_face"] = sum(r[2] is not None for r in results)
    report["similarities"] = [
        {"a": str(p.path_a.relative_to(args.root)), "b": str(p.path_b.relative_to(args.root)), "same": p.same,
         "similarity": round(float(v), 6)}
        for p, v in zip(pairs, similarities, strict=True)
    ]
    report["no_face_details"] = [
        f"{p.path_a.name} / {p.path_b.name}: {r[2]}" for p, r in zip(pairs, results, strict=True) if r[2]
    ]

    width = max(len(k) for k in report)
    for key, value in report.items():
        if key not in ("no_face_details", "similarities"):
            print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        plot_roc(similarities, same, report, args.json.with_suffix(".png"))
        print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

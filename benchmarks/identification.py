"""Open-set identification on LFW: choose the gallery threshold and how people are scored.

    python benchmarks/identification.py --root ../shared/datasets/lfw-devtest/deepfunneled [--url ...] [--json OUT]

Protocol: every person with 3+ photos is enrolled from their first two photos and
probed with the third; every person with a single photo is a stranger who must be
called unknown. Embeddings come from the running service (`POST /embedding`).
People are scored either by their best sample or by their samples' centroid;
for thresholds from 0.15 to 0.50 it prints the share of enrolled people named
correctly and the share of strangers called unknown.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

THRESHOLDS = np.round(np.arange(0.15, 0.51, 0.025), 3)


def embed_all(paths: list[Path], url: str, concurrency: int) -> dict[Path, np.ndarray | None]:
    from tqdm import tqdm

    def one(client: httpx.Client, path: Path) -> np.ndarray | None:
        response = client.post("/embedding", files={"image": (path.name, path.read_bytes())})
        return np.array(response.json()["embedding"], np.float32) if response.status_code == 200 else None

    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(concurrency) as pool:
        vectors = list(tqdm(pool.map(lambda p: one(client, p), paths), total=len(paths), desc="photos"))
    return dict(zip(paths, vectors, strict=True))


def scores(gallery: list[np.ndarray], probes: np.ndarray, mode: str) -> np.ndarray:
    """(P, people) similarity of each probe to each person, by best sample or centroid."""
    if mode == "centroid":
        centroids = np.stack([g.mean(axis=0) / np.linalg.norm(g.mean(axis=0)) for g in gallery])
        return probes @ centroids.T
    return np.stack([(probes @ g.T).max(axis=1) for g in gallery], axis=1)


def evaluate(root: Path, url: str, concurrency: int) -> dict:
    people = sorted(p for p in root.iterdir() if p.is_dir())
    photos = {p.name: sorted(p.glob("*.jpg")) for p in people}
    enrolled = [name for name, files in photos.items() if len(files) >= 3]
    strangers = [name for name, files in photos.items() if len(files) == 1]
    needed = [f for name in enrolled for f in photos[name][:3]] + [photos[name][0] for name in strangers]
    vectors = embed_all(needed, url, concurrency)
    missing = [str(p.relative_to(root)) for p, v in vectors.items() if v is None]
    enrolled = [n for n in enrolled if all(vectors[f] is not None for f in photos[n][:3])]
    strangers = [n for n in strangers if vectors[photos[n][0]] is not None]
    gallery = [np.stack([vectors[f] for f in photos[n][:2]]) for n in enrolled]
    probes = np.stack([vectors[photos[n][2]] for n in enrolled])
    outsiders = np.stack([vectors[photos[n][0]] for n in strangers])
    report = {"enrolled": len(enrolled), "strangers": len(strangers), "photos_without_face": missing, "modes": {}}
    for mode in ("best_sample", "centroid"):
        own, other = scores(gallery, probes, mode), scores(gallery, outsiders, mode)
        top = own.argmax(axis=1)
        rank1 = float(np.mean(top == np.arange(len(enrolled))))
        rows = []
        for t in THRESHOLDS:
            named = float(np.mean((top == np.arange(len(enrolled))) & (own.max(axis=1) >= t)))
            unknown = float(np.mean(other.max(axis=1) < t))
            rows.append({"threshold": float(t), "named_correctly": named, "strangers_unknown": unknown})
        report["modes"][mode] = {"rank1": rank1, "sweep": rows}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    report = evaluate(args.root, args.url, args.concurrency)
    print(f"{report['enrolled']} people enrolled (2 photos each, probed with a 3rd); {report['strangers']} strangers")
    for mode, result in report["modes"].items():
        print(f"\n{mode}: rank-1 {result['rank1']:.4f}\n  threshold  named correctly  strangers unknown")
        for row in result["sweep"]:
            print(f"  {row['threshold']:9.3f}  {row['named_correctly']:14.4f}  {row['strangers_unknown']:17.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

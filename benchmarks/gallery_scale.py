"""The SQLite gallery from 10^4 to 10^6 faces: bulk load, start-up, identify latency, memory, ANN agreement.

    python benchmarks/gallery_scale.py --faces 10000 100000 1000000 [--index ann exact] [--json]

Identity-structured synthetic embeddings (`synthetic.py`): each person a random centre, 5
samples at a cosine of 0.6–0.8 to it, mated probes drawn the same way; so approximate search
is measured on clustered data, not on uniform noise. Per (faces, index):
- `bulk_faces_per_s`: `create_many` of 2,000 people a transaction, into a new file;
- `startup_s`: a fresh process opens the gallery and answers its first search (the index
  loaded from its saved file, or read from the database for exact search); `index_rss_mb`
  is that process's resident memory after the answer minus before the open;
- `identify_p50_ms` / `identify_p99_ms`: one face a search, over the mated probes;
- `top1_agreement`: the share of mated probes whose first match is the exact search's
  (numpy over every centroid; scoring `centroid`, the default).
Benchmarks print numbers; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402

from gallery.ann import LIBRARY  # noqa: E402
from gallery.sqlite import SqliteGallery  # noqa: E402

PER_PERSON = 5
BATCH_PEOPLE = 2_000
PROBES = 1_000


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


def load(path: Path, faces: int, index: str) -> tuple[float, np.ndarray]:
    """Bulk-load faces/5 people; returns faces/s and the people's exact centroids (P, 512)."""
    people = faces // PER_PERSON
    centres, samples, _ = synthetic.gallery(people, PER_PERSON, seed=0)
    gallery = SqliteGallery(path, "centroid", index)
    started = time.perf_counter()
    for first in range(0, people, BATCH_PEOPLE):
        batch = range(first, min(first + BATCH_PEOPLE, people))
        gallery.create_many([(f"person {p}", {}, samples[p * PER_PERSON : (p + 1) * PER_PERSON]) for p in batch])
    seconds = time.perf_counter() - started
    gallery.prepare()  # index built (and, approximate, saved) before the start-up is measured
    if gallery.index._builder is not None:
        gallery.index._builder.join()
    gallery.close()
    centroids = synthetic.unit_rows(np.add.reduceat(samples, np.arange(0, len(samples), PER_PERSON), axis=0))
    return people * PER_PERSON / seconds, centroids


def measure_open(path: Path, index: str, probes_file: Path) -> dict:
    """In this (fresh) process: open, first answer, then every probe one at a time."""
    probes = np.load(probes_file)
    before = rss_mb()
    started = time.perf_counter()
    gallery = SqliteGallery(path, "centroid", index)
    gallery.search(probes[:1], 5)
    startup = time.perf_counter() - started
    memory = rss_mb() - before
    times, names = [], []
    for probe in probes:
        begin = time.perf_counter()
        found = gallery.search(probe[None], 5)
        times.append(time.perf_counter() - begin)
        names.append(found[0][0].name if found[0] else "")
    status = gallery.index.status()
    gallery.close()
    return {"startup_s": startup, "index_rss_mb": memory, "times": times, "names": names,
            "loaded_from_file": status["loaded_from_file"], "kind": status["index"]}


def row(faces: int, index: str, folder: Path) -> dict:
    path = folder / f"g{faces}-{index}.db"
    bulk, centroids = load(path, faces, index)
    probes, who = synthetic.mated_probes(synthetic.centres(len(centroids), 0), PROBES, seed=5)
    truth = np.concatenate([np.argmax(chunk @ centroids.T, axis=1) for chunk in np.array_split(probes, 10)])
    probes_file = folder / "probes.npy"
    np.save(probes_file, probes)
    answer = subprocess.run(  # a fresh process: start-up and memory as a restarted API sees them
        [sys.executable, __file__, "--measure-open", str(path), index, str(probes_file)],
        check=True, capture_output=True, text=True,
    )
    measured = json.loads(answer.stdout.strip().splitlines()[-1])
    times = np.asarray(measured["times"]) * 1000
    agreement = float(np.mean([n == f"person {t}" for n, t in zip(measured["names"], truth, strict=True)]))
    return {
        "faces": faces,
        "people": len(centroids),
        "index": f"{measured['kind']} ({LIBRARY})" if measured["kind"] == "ann" else "exact (numpy)",
        "identify_p50_ms": float(np.percentile(times, 50)),
        "identify_p99_ms": float(np.percentile(times, 99)),
        "top1_agreement": agreement,
        "top1_is_the_probes_person": float(np.mean(truth == who)),
        "index_rss_mb": measured["index_rss_mb"],
        "startup_s": measured["startup_s"],
        "loaded_from_file": measured["loaded_from_file"],
        "bulk_faces_per_s": bulk,
        "disk_mb": path.stat().st_size / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--index", nargs="+", choices=["ann", "exact", "auto"], default=["ann"])
    parser.add_argument("--json", action="store_true", help="one JSON line per row instead of the table")
    parser.add_argument("--measure-open", nargs=3, metavar=("DB", "INDEX", "PROBES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_open:
        db, index, probes = args.measure_open
        print(json.dumps(measure_open(Path(db), index, Path(probes))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for faces in args.faces:
            for index in args.index:
                rows.append(row(faces, index, Path(scratch)))
                if args.json:
                    print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        print(f"{'faces':>9} {'index':<22} {'p50 ms':>7} {'p99 ms':>7} {'top-1':>7} {'RSS MB':>7} {'start s':>8}"
              f" {'bulk faces/s':>13} {'disk MB':>8}")
        for r in rows:
            print(f"{r['faces']:>9} {r['index']:<22} {r['identify_p50_ms']:>7.2f} {r['identify_p99_ms']:>7.2f}"
                  f" {r['top1_agreement']:>7.2%} {r['index_rss_mb']:>7.0f} {r['startup_s']:>8.2f}"
                  f" {r['bulk_faces_per_s']:>13.0f} {r['disk_mb']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

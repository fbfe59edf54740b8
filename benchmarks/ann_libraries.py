"""Which approximate index for the gallery: usearch and faiss HNSW graphs against faiss sign-code scans.

    python benchmarks/ann_libraries.py [--people 200000] [--probes 500]

The vectors are what the default (centroid) scoring indexes at 10^6 faces: 200,000 person
centroids, each the unit mean of 5 identity-structured samples (`synthetic.py`); probes are
new samples of enrolled people. Printed per candidate: build time (2 threads), search time of
one face (one thread, p50/p99), top-1 agreement with exact float32 search, and memory. For
the sign-code scans "top-1" means the exact best person is among the candidates re-scored
exactly (what `gallery.ann` does). Benchmarks print numbers; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402

PER_PERSON = 5
BUILD_THREADS = 2


def timed(search: Callable[[int], np.ndarray], probes: int, truth: np.ndarray) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, share of probes whose exact best is among what `search(i)` returns)."""
    times, hits = [], 0
    for i in range(probes):
        start = time.perf_counter()
        found = search(i)
        times.append(time.perf_counter() - start)
        hits += int(truth[i] in found)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), hits / probes


def usearch_rows(centroids, probes, truth, connectivities, expansions):
    from usearch.index import Index

    for connectivity in connectivities:
        index = Index(ndim=centroids.shape[1], metric="cos", dtype="i8", connectivity=connectivity, expansion_add=128)
        start = time.perf_counter()
        index.add(np.arange(len(centroids)), centroids, threads=BUILD_THREADS)
        build = time.perf_counter() - start
        for ef in expansions:
            index.expansion_search = ef
            p50, p99, top1 = timed(lambda i, index=index: index.search(probes[i], 1, threads=1).keys[:1], len(probes),
                                   truth)
            yield f"usearch HNSW i8 M={connectivity} ef={ef}", build, p50, p99, top1, index.memory_usage / 2**20


def faiss_hnsw_rows(centroids, probes, truth, connectivities, expansions):
    for connectivity in connectivities:
        index = faiss.IndexHNSWSQ(centroids.shape[1], faiss.ScalarQuantizer.QT_8bit, connectivity,
                                  faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 128
        faiss.omp_set_num_threads(BUILD_THREADS)
        start = time.perf_counter()
        index.train(centroids)
        index.add(centroids)
        build = time.perf_counter() - start
        faiss.omp_set_num_threads(1)
        memory = faiss.serialize_index(index).nbytes / 2**20
        for ef in expansions:
            index.hnsw.efSearch = ef
            p50, p99, top1 = timed(lambda i, index=index: index.search(probes[i : i + 1], 1)[1][0], len(probes), truth)
            yield f"faiss HNSW SQ8 M={connectivity} ef={ef}", build, p50, p99, top1, memory


def code_scan_rows(centroids, probes, truth, candidate_counts):
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    codes = np.packbits(centroids > 0, axis=1)
    build = time.perf_counter() - start
    probe_codes = np.packbits(probes > 0, axis=1)
    for count in candidate_counts:
        def search(i: int, count: int = count) -> np.ndarray:
            _, proposed = faiss.knn_hamming(probe_codes[i : i + 1], codes, count)
            scores = centroids[proposed[0]] @ probes[i]  # exact re-scoring, as gallery.ann does
            return proposed[0][np.argmax(scores)][None]

        p50, p99, top1 = timed(search, len(probes), truth)
        memory = (codes.nbytes + centroids.nbytes) / 2**20
        yield f"faiss sign codes, {count} re-scored", build, p50, p99, top1, memory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=200_000)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--connectivity", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--candidates", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--skip", nargs="*", default=[], choices=["usearch", "faiss-hnsw"])
    args = parser.parse_args(argv)
    centres, samples, _ = synthetic.gallery(args.people, PER_PERSON, seed=0)
    centroids = synthetic.unit_rows(np.add.reduceat(samples, np.arange(0, len(samples), PER_PERSON), axis=0))
    del samples
    probes, _ = synthetic.mated_probes(centres, args.probes, seed=9)
    truth = np.argmax(probes @ centroids.T, axis=1)
    print(f"{args.people:,} centroids, {args.probes} mated probes; build {BUILD_THREADS} threads, search 1 thread")
    print(f"{'index':<36} {'build s':>8} {'p50 ms':>7} {'p99 ms':>7} {'top-1':>7} {'MB':>6}", flush=True)
    rows = [code_scan_rows(centroids, probes, truth, args.candidates)]
    if "usearch" not in args.skip:
        rows.append(usearch_rows(centroids, probes, truth, args.connectivity, args.ef))
    if "faiss-hnsw" not in args.skip:
        rows.append(faiss_hnsw_rows(centroids, probes, truth, args.connectivity, args.ef))
    for source in rows:
        for name, build, p50, p99, top1, memory in source:
            print(f"{name:<36} {build:>8.1f} {p50:>7.2f} {p99:>7.2f} {top1:>7.1%} {memory:>6.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

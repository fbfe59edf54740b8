"""The gallery on PostgreSQL with pgvector, shared by several API replicas.

Same interface and behaviour as `gallery.sqlite.SqliteGallery`; chosen with
`GALLERY_URL=postgresql://...`. Every face sample is a `vector(512)` row; each person
keeps the normalised centroid of their samples, updated in the same transaction as
their samples, and its binary quantisation (`centroid_bits`, a generated column).
A centroid search (the default) is exact: a scan of every person's 64-byte
`centroid_bits` by Hamming distance keeps `CENTROID_CANDIDATES`, which are ranked by
their float32 cosine. A best-sample search asks the HNSW index of the samples (halfvec,
cosine) for the nearest samples and groups them by person. `create_many` loads many
people by COPY, building the HNSW index once for large loads. Nothing is cached in the
process: every replica sees every commit. Schema migrations run under an advisory lock,
so replicas may start together.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from gallery.postgres_schema import migrate, read_model, write_model
from gallery.samples import SAMPLE_COLUMNS, STORED_FACE_SQL, sample_values, samples_for, stored_face
from gallery.store import (
    EMBEDDING_DIM,
    SCORINGS,
    FaceNotFound,
    Identity,
    IdentityNotFound,
    LastFace,
    Match,
    ModelChangeIncomplete,
    ModelFingerprint,
    ModelStatus,
    PendingCrop,
    Person,
    Sample,
    StoredFace,
    as_vectors,
    new_id,
    now,
)

log = logging.getLogger("frtriton")

BEST_SAMPLE_FANOUT = 10  # best-sample search reads this many nearest samples per wanted person
# hnsw.ef_search of a best-sample search (at least top_k x BEST_SAMPLE_FANOUT). More candidates find
# more true nearest samples, slower (benchmarks/pg_scale.py; README, "PostgreSQL at a million faces").
EF_SEARCH = 200
# A centroid search ranks this many people (at least top_k x BEST_SAMPLE_FANOUT) by float32 cosine,
# taken as the nearest by Hamming distance of the binary-quantised centroids. Measured against exact
# float search at 200,000 people: 100 % the same top-1 with 20 or 100 (HNSW, ef_search 200: 58 %).
CENTROID_CANDIDATES = 100

# create_many: below BULK_REBUILD_MIN_FACES new faces, or when they are fewer than
# BULK_REBUILD_RATIO x the faces already stored, rows go into the existing HNSW index;
# otherwise it is dropped and built once after the COPY. Measured (benchmarks/pg_scale.py,
# 2 cores): an insert into the index costs 7 ms a face at 10^5 stored, 12 ms at 10^6; a
# build 0.7-0.8 ms a face. Rebuilding k new faces next to n stored is cheaper once k/n
# exceeds 0.12 at 10^5, 0.06 at 10^6: 0.1 between them (at worst 1.5x the cheaper path).
BULK_REBUILD_MIN_FACES = 1_000
BULK_REBUILD_RATIO = 0.1
HNSW_INDEXES = ("faces_hnsw",)
HNSW_BUILD_BYTES = 2 * 1024  # in-memory HNSW build, per face: its halfvec(512), its neighbour lists (m=16), margin

# Binary COPY types of SAMPLE_COLUMNS (gallery.samples), in its order.
FACE_MEASUREMENT_TYPES = ("float8",) * 6 + ("text",)
INSERT_FACE_SQL = (
    f"INSERT INTO faces (identity_id, embedding, created_at, model_sha256, {', '.join(SAMPLE_COLUMNS)})"
    f" VALUES (%s, %s, %s, COALESCE(%s, (SELECT value FROM gallery_meta WHERE key = 'model_sha256'))"
    f"{', %s' * len(SAMPLE_COLUMNS)}) RETURNING id"
)

IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created_at, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
    " FROM identities i"
)


class PgGallery:
    def __init__(
        self,
        url: str,
        scoring: str = "centroid",
        *,
        ef_search: int = EF_SEARCH,
        bulk_memory_mb: int = 4096,
        bulk_workers: int | None = None,
    ) -> None:
        """`ef_search`: HNSW candidates a best-sample search keeps (recall against time); `bulk_memory_mb` caps
        create_many's maintenance_work_mem for an HNSW rebuild, `bulk_workers` sets its
        max_parallel_maintenance_workers (None: the server's setting)."""
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}")
        self.url = url
        self.scoring = scoring
        self.ef_search = ef_search
        self.bulk_memory_mb = bulk_memory_mb
        self.bulk_workers = bulk_workers
        self.last_bulk_load: dict | None = None  # create_many's last load: sizes, path taken, seconds per phase
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        migrate(url)

    # ---- plumbing
    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=False)
            self._conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            self._conn.commit()
            register_vector(self._conn)
        return self._conn

    def _run(self, operation: Callable[[psycopg.Cursor], Any]) -> Any:
        """One transaction: commit on success, roll back on any error."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.cursor() as cursor:
                    result = operation(cursor)
                conn.commit()
                return result
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

    @staticmethod
    def _identity(cursor: psycopg.Cursor, identity_id: str) -> Identity:
        cursor.execute(IDENTITY_SQL + " WHERE i.id = %s", (identity_id,))
        row = cursor.fetchone()
        if row is None:
            raise IdentityNotFound(identity_id)
        return Identity(row[0], row[1], row[2], row[4], row[3])

    @staticmethod
    def _lock_identity(cursor: psycopg.Cursor, identity_id: str) -> None:
        cursor.execute("SELECT id FROM identities WHERE id = %s FOR UPDATE", (identity_id,))
        if cursor.fetchone() is None:
            raise IdentityNotFound(identity_id)

    @staticmethod
    def _refresh_centroid(cursor: psycopg.Cursor, identity_id: str) -> None:
        cursor.execute(
            "UPDATE identities SET updated_at = %s, centroid ="
            " (SELECT l2_normalize(AVG(embedding)) FROM faces WHERE identity_id = %s) WHERE id = %s",
            (now(), identity_id, identity_id),
        )

    @staticmethod
    def _insert_faces(
        cursor: psycopg.Cursor, identity_id: str, embeddings: np.ndarray, samples: Sequence[Sample] | None,
        stamp: str,
    ) -> tuple[int, ...]:
        """Store the samples; their new ids, in order (one INSERT ... RETURNING each: a request holds a few)."""
        ids = []
        vectors = as_vectors(embeddings)
        for vector, sample in zip(vectors, samples_for(len(vectors), samples), strict=True):
            cursor.execute(INSERT_FACE_SQL, (identity_id, vector, stamp, sample.model_sha256, *sample_values(sample)))
            ids.append(cursor.fetchone()[0])
            if sample.crop:
                cursor.execute("INSERT INTO face_crops (face_id, crop) VALUES (%s, %s)", (ids[-1], sample.crop))
        return tuple(ids)

    def _should_rebuild(self, cursor: psycopg.Cursor, new_faces: int) -> bool:
        if new_faces < BULK_REBUILD_MIN_FACES:
            return False
        cursor.execute("SELECT COUNT(*) FROM faces")
        return new_faces >= BULK_REBUILD_RATIO * cursor.fetchone()[0]

    @staticmethod
    def _drop_hnsw_indexes(cursor: psycopg.Cursor) -> list[str]:
        """Drop the HNSW indexes; returns their definitions (as the schema has them) to build them again."""
        # Lock in create()'s order (identities, then faces): a concurrent create() waits instead of deadlocking.
        cursor.execute("LOCK TABLE identities, faces IN ACCESS EXCLUSIVE MODE")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = ANY(%s)",
            (list(HNSW_INDEXES),),
        )
        found = dict(cursor.fetchall())
        for name in found:
            cursor.execute(f"DROP INDEX {name}")
        return [found[name] for name in HNSW_INDEXES if name in found]

    def _build_hnsw_indexes(self, cursor: psycopg.Cursor, definitions: list[str]) -> int:
        """Build the dropped indexes again; returns the maintenance_work_mem (MB) they were given."""
        cursor.execute("SELECT COUNT(*) FROM faces")
        memory_mb = min(self.bulk_memory_mb, 64 + cursor.fetchone()[0] * HNSW_BUILD_BYTES // 2**20)
        cursor.execute(f"SET LOCAL maintenance_work_mem = '{int(memory_mb)}MB'")
        if self.bulk_workers is not None:
            cursor.execute(f"SET LOCAL max_parallel_maintenance_workers = {int(self.bulk_workers)}")
        for definition in definitions:
            log.info("create_many: %s (maintenance_work_mem %d MB)", definition, memory_mb)
            self._create_index(cursor, definition)
        cursor.execute("ANALYZE identities")
        cursor.execute("ANALYZE faces")
        return memory_mb

    @staticmethod
    def _create_index(cursor: psycopg.Cursor, definition: str) -> None:
        """CREATE INDEX, in parallel where the server plans it, serially when the shared memory is refused.

        A parallel HNSW build takes all of maintenance_work_mem from /dev/shm up front; a
        container's /dev/shm is 64 MB unless raised (docker `shm_size`), so the build fails there
        ("could not resize shared memory segment") and is tried again without workers.
        """
        cursor.execute("SAVEPOINT hnsw_build")
        try:
            cursor.execute(definition)
        except (psycopg.errors.DiskFull, psycopg.errors.OutOfMemory) as error:
            cursor.execute("ROLLBACK TO SAVEPOINT hnsw_build")
            log.warning("create_many: %s; building without parallel workers (more /dev/shm: in parallel)", error)
            cursor.execute("SET LOCAL max_parallel_maintenance_workers = 0")
            cursor.execute(definition)
        cursor.execute("RELEASE SAVEPOINT hnsw_build")

    # ---- the Gallery interface
    def create(
        self, name: str, metadata: dict, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity:
        return self.create_many([(name, metadata, embeddings, samples)])[0]

    def create_many(self, people: Sequence[Person], *, rebuild_indexes: bool | None = None) -> list[Identity]:
        """Create many people in one transaction (all or none): the same rows as create() for each.

        `people`: (name, metadata, embeddings[, samples]) each. Identities (with their centroids,
        computed here) and faces go in by binary COPY; the answers carry the new face ids. When
        the new faces are many next to those stored (`BULK_REBUILD_*`; `rebuild_indexes`
        overrides), the HNSW index of the samples is dropped first and built once at the end,
        with `maintenance_work_mem` sized to the graph (at most `bulk_memory_mb`): both tables
        are then locked (ACCESS EXCLUSIVE) until the commit, so every replica's searches and
        enrollments wait. Otherwise other connections go on reading the gallery as it was.
        """
        loads = []
        for name, metadata, embeddings, *rest in people:
            vectors = as_vectors(embeddings)
            if not len(vectors):
                raise ValueError("every person needs at least one embedding")
            loads.append((name, metadata, vectors, samples_for(len(vectors), rest[0] if rest else None)))
        if not loads:
            return []
        new_faces = sum(len(vectors) for _, _, vectors, _ in loads)
        ids = [new_id() for _ in loads]
        stamps = _increasing_stamps(len(loads))
        load: dict = {"people": len(loads), "faces": new_faces}

        def operation(cursor):
            started = time.perf_counter()
            rebuild = self._should_rebuild(cursor, new_faces) if rebuild_indexes is None else rebuild_indexes
            definitions = self._drop_hnsw_indexes(cursor) if rebuild else []
            recorded = read_model(cursor)
            default_model = recorded.sha256 if recorded else None
            with cursor.copy(
                "COPY identities (id, name, metadata, centroid, created_at, updated_at) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text", "jsonb", "vector", "text", "text"])
                for identity_id, stamp, (name, metadata, vectors, _) in zip(ids, stamps, loads, strict=True):
                    copy.write_row((identity_id, name, Jsonb(metadata), _centroid(vectors), stamp, stamp))
            columns = ", ".join(("identity_id", "embedding", "created_at", "model_sha256", *SAMPLE_COLUMNS))
            with cursor.copy(f"COPY faces ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "vector", "text", "text", *FACE_MEASUREMENT_TYPES])
                for identity_id, stamp, (_, _, vectors, samples) in zip(ids, stamps, loads, strict=True):
                    for vector, sample in zip(vectors, samples, strict=True):
                        model = sample.model_sha256 or default_model
                        copy.write_row((identity_id, vector, stamp, model, *sample_values(sample)))
            # BIGSERIAL numbers the rows in COPY order: each person's ids, in the order of their embeddings.
            cursor.execute("SELECT identity_id, id FROM faces WHERE identity_id = ANY(%s) ORDER BY id", (ids,))
            face_ids: dict[str, list[int]] = {identity_id: [] for identity_id in ids}
            for identity_id, face_id in cursor.fetchall():
                face_ids[identity_id].append(face_id)
            crops = [
                (face_id, sample.crop)
                for identity_id, (_, _, _, samples) in zip(ids, loads, strict=True)
                for face_id, sample in zip(face_ids[identity_id], samples, strict=True)
                if sample.crop
            ]
            if crops:
                cursor.executemany("INSERT INTO face_crops (face_id, crop) VALUES (%s, %s)", crops)
            copied = time.perf_counter()
            log.info("create_many: copied %d people, %d faces in %.1f s", len(loads), new_faces, copied - started)
            if definitions:
                load["maintenance_work_mem_mb"] = self._build_hnsw_indexes(cursor, definitions)
            load.update(rebuilt_indexes=bool(rebuild), copy_s=copied - started, index_s=time.perf_counter() - copied)
            return [
                Identity(identity_id, name, json.loads(json.dumps(metadata)), len(vectors), stamp,
                         face_ids=tuple(face_ids[identity_id]))
                for identity_id, stamp, (name, metadata, vectors, _) in zip(ids, stamps, loads, strict=True)
            ]

        made = self._run(operation)
        self.last_bulk_load = load
        return made

    def add_faces(
        self, identity_id: str, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity:
        def operation(cursor):
            self._lock_identity(cursor, identity_id)
            ids = self._insert_faces(cursor, identity_id, embeddings, samples, now())
            self._refresh_centroid(cursor, identity_id)
            return replace(self._identity(cursor, identity_id), face_ids=ids)

        return self._run(operation)

    def faces(self, identity_id: str) -> list[StoredFace]:
        def operation(cursor):
            self._identity(cursor, identity_id)
            cursor.execute(STORED_FACE_SQL + " FROM faces f WHERE f.identity_id = %s ORDER BY f.id", (identity_id,))
            return [stored_face(row) for row in cursor.fetchall()]

        return self._run(operation)

    def delete_face(self, identity_id: str, face_id: int) -> Identity:
        def operation(cursor):
            self._lock_identity(cursor, identity_id)  # a concurrent delete of its other face waits
            cursor.execute("SELECT identity_id FROM faces WHERE id = %s", (face_id,))
            owner = cursor.fetchone()
            if owner is None or owner[0] != identity_id:
                raise FaceNotFound(identity_id, face_id)
            cursor.execute("SELECT COUNT(*) FROM faces WHERE identity_id = %s", (identity_id,))
            if cursor.fetchone()[0] == 1:
                raise LastFace(identity_id, face_id)
            cursor.execute("DELETE FROM faces WHERE id = %s", (face_id,))
            self._refresh_centroid(cursor, identity_id)
            return self._identity(cursor, identity_id)

        return self._run(operation)

    def get(self, identity_id: str) -> Identity:
        return self._run(lambda cursor: self._identity(cursor, identity_id))

    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]:
        def operation(cursor):
            cursor.execute("SELECT COUNT(*) FROM identities")
            total = cursor.fetchone()[0]
            cursor.execute(IDENTITY_SQL + " ORDER BY i.created_at, i.id LIMIT %s OFFSET %s", (limit, offset))
            return total, [Identity(r[0], r[1], r[2], r[4], r[3]) for r in cursor.fetchall()]

        return self._run(operation)

    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity:
        def operation(cursor):
            self._lock_identity(cursor, identity_id)
            if name is not None:
                cursor.execute("UPDATE identities SET name = %s WHERE id = %s", (name, identity_id))
            if metadata is not None:
                cursor.execute("UPDATE identities SET metadata = %s WHERE id = %s", (Jsonb(metadata), identity_id))
            cursor.execute("UPDATE identities SET updated_at = %s WHERE id = %s", (now(), identity_id))
            return self._identity(cursor, identity_id)

        return self._run(operation)

    def merge(self, target_id: str, source_id: str) -> Identity:
        def operation(cursor):
            for identity_id in sorted((target_id, source_id)):  # one lock order: no deadlock
                self._lock_identity(cursor, identity_id)
            cursor.execute("UPDATE faces SET identity_id = %s WHERE identity_id = %s", (target_id, source_id))
            cursor.execute("DELETE FROM identities WHERE id = %s", (source_id,))
            self._refresh_centroid(cursor, target_id)
            return self._identity(cursor, target_id)

        return self._run(operation)

    def delete(self, identity_id: str) -> None:
        def operation(cursor):
            cursor.execute("DELETE FROM identities WHERE id = %s", (identity_id,))
            if cursor.rowcount == 0:
                raise IdentityNotFound(identity_id)

        self._run(operation)

    def delete_all(self) -> int:
        def operation(cursor):
            cursor.execute("DELETE FROM faces")
            cursor.execute("DELETE FROM identities")
            return cursor.rowcount

        return self._run(operation)

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]:
        vectors = as_vectors(queries)

        def operation(cursor):
            cursor.execute(f"SET LOCAL hnsw.ef_search = {max(self.ef_search, top_k * BEST_SAMPLE_FANOUT)}")
            results = []
            for vector in vectors:
                if self.scoring == "centroid":
                    cursor.execute(
                        "SELECT c.id, c.name, 1 - (c.centroid <=> %s) FROM ("
                        "  SELECT id, name, centroid FROM identities WHERE centroid IS NOT NULL"
                        f"  ORDER BY centroid_bits <~> %s::bit({EMBEDDING_DIM}) LIMIT %s) c"
                        " ORDER BY c.centroid <=> %s LIMIT %s",
                        (vector, _bits(vector), max(CENTROID_CANDIDATES, top_k * BEST_SAMPLE_FANOUT), vector, top_k),
                    )
                    results.append([Match(r[0], r[1], float(r[2])) for r in cursor.fetchall()])
                    continue
                cursor.execute(
                    "SELECT n.identity_id, i.name, MAX(n.similarity) AS best FROM ("
                    "  SELECT identity_id, 1 - (embedding <=> %s) AS similarity FROM faces"
                    f"  ORDER BY embedding::halfvec({EMBEDDING_DIM}) <=> %s::halfvec({EMBEDDING_DIM}) LIMIT %s) n"
                    " JOIN identities i ON i.id = n.identity_id GROUP BY n.identity_id, i.name"
                    " ORDER BY best DESC LIMIT %s",
                    (vector, vector, top_k * BEST_SAMPLE_FANOUT, top_k),
                )
                results.append([Match(r[0], r[1], float(r[2])) for r in cursor.fetchall()])
            return results

        return self._run(operation)

    def score_identity(self, identity_id: str, queries: np.ndarray) -> list[Match]:
        vectors = as_vectors(queries)
        # The same expressions as `search` (its candidates are only a shortcut to the nearest people).
        if self.scoring == "centroid":
            query = "SELECT 1 - (centroid <=> %s) FROM identities WHERE id = %s"
        else:
            query = "SELECT MAX(1 - (embedding <=> %s)) FROM faces WHERE identity_id = %s"

        def operation(cursor):
            identity = self._identity(cursor, identity_id)
            scores = []
            for vector in vectors:
                cursor.execute(query, (vector, identity_id))
                [score] = cursor.fetchone()
                if score is None:  # no samples (only ever between a last delete and its identity's)
                    raise IdentityNotFound(identity_id)
                scores.append(float(score))
            return [Match(identity.id, identity.name, score) for score in scores]

        return self._run(operation)

    def prepare(self) -> None:
        """Nothing to do: the HNSW indexes live in the database."""

    def index_status(self) -> dict:
        return {"index": "hnsw", "library": "pgvector", "generation": None, "building": False,
                "loaded_from_file": False}

    def face_count(self) -> int:
        def operation(cursor):
            cursor.execute("SELECT COUNT(*) FROM faces")
            return cursor.fetchone()[0]

        return self._run(operation)

    # ---- which recognizer made the embeddings
    def model(self) -> ModelFingerprint | None:
        return self._run(read_model)

    def claim_model(self, served: ModelFingerprint) -> tuple[ModelFingerprint, int | None]:
        def operation(cursor):
            cursor.execute("LOCK TABLE gallery_meta IN EXCLUSIVE MODE")  # replicas starting together: one records
            recorded = read_model(cursor)
            if recorded is not None:
                return recorded, None
            write_model(cursor, served)
            cursor.execute("UPDATE faces SET model_sha256 = %s WHERE model_sha256 IS NULL", (served.sha256,))
            return served, cursor.rowcount

        return self._run(operation)

    def model_status(self, sha256: str) -> ModelStatus:
        def operation(cursor):
            cursor.execute(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE model_sha256 IS DISTINCT FROM %s) FROM faces", (sha256,)
            )
            total, pending = cursor.fetchone()
            cursor.execute(  # the crop looked up for the pending samples only
                "SELECT COUNT(*), COUNT(DISTINCT identity_id) FROM faces f WHERE f.model_sha256 IS DISTINCT FROM %s"
                " AND NOT EXISTS (SELECT 1 FROM face_crops c WHERE c.face_id = f.id)",
                (sha256,),
            )
            return ModelStatus(total, pending, *cursor.fetchone())

        return self._run(operation)

    def pending_crops(self, sha256: str, after_id: int, limit: int) -> list[PendingCrop]:
        def operation(cursor):
            cursor.execute(
                "SELECT f.id, f.identity_id, c.crop FROM faces f JOIN face_crops c ON c.face_id = f.id"
                " WHERE f.id > %s AND f.model_sha256 IS DISTINCT FROM %s ORDER BY f.id LIMIT %s",
                (after_id, sha256, limit),
            )
            return [PendingCrop(face_id, identity_id, bytes(crop)) for face_id, identity_id, crop in cursor.fetchall()]

        return self._run(operation)

    def replace_embeddings(self, updates: Sequence[tuple[int, np.ndarray]], sha256: str) -> int:
        def operation(cursor):
            face_ids = [face_id for face_id, _ in updates]
            # the people first, in one order (as every other write locks them): no deadlock
            cursor.execute(
                "SELECT id FROM identities WHERE id IN (SELECT identity_id FROM faces WHERE id = ANY(%s))"
                " ORDER BY id FOR UPDATE",
                (face_ids,),
            )
            people = [row[0] for row in cursor.fetchall()]
            updated = 0
            for face_id, vector in updates:
                cursor.execute(
                    "UPDATE faces SET embedding = %s, model_sha256 = %s WHERE id = %s",
                    (as_vectors(vector)[0], sha256, face_id),
                )
                updated += cursor.rowcount
            for identity_id in people:
                self._refresh_centroid(cursor, identity_id)
            return updated

        return self._run(operation)

    def finish_model_change(self, target: ModelFingerprint) -> None:
        def operation(cursor):
            cursor.execute("LOCK TABLE gallery_meta IN EXCLUSIVE MODE")
            cursor.execute("SELECT COUNT(*) FROM faces WHERE model_sha256 IS DISTINCT FROM %s", (target.sha256,))
            if (count := cursor.fetchone()[0]) > 0:
                raise ModelChangeIncomplete(count, target)
            write_model(cursor, target)

        self._run(operation)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and not self._conn.closed:
                self._conn.close()


def _centroid(vectors: np.ndarray) -> np.ndarray | None:
    """The l2-normalised mean, as create() stores it (l2_normalize(AVG(embedding))); None without samples."""
    if len(vectors) == 0:
        return None
    mean = vectors.mean(axis=0, dtype=np.float64)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def _bits(vector: np.ndarray) -> str:
    """pgvector's binary_quantize as a bit-string literal: 1 where the component is positive."""
    return (vector > 0).astype(np.uint8).tobytes().translate(bytes.maketrans(b"\x00\x01", b"01")).decode()


def _increasing_stamps(count: int) -> list[str]:
    """`count` creation times, strictly increasing from now: list() keeps create_many's order."""
    start = dt.datetime.now(dt.UTC)
    return [(start + dt.timedelta(microseconds=i)).isoformat(timespec="microseconds") for i in range(count)]

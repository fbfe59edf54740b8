"""The gallery on PostgreSQL with pgvector, shared by several API replicas.

Same interface and behaviour as `gallery.sqlite.SqliteGallery`; chosen with
`GALLERY_URL=postgresql://...`. Every face sample is a `vector(512)` row; each person
keeps the normalised centroid of their samples, updated in the same transaction as
their samples. Both columns carry HNSW indexes (cosine), so a search is one indexed
query: by centroid (default) or, for best-sample scoring, the nearest samples grouped
by person. Nothing is cached in the process: every replica sees every commit.
Schema migrations run under an advisory lock, so replicas may start together.
"""

from __future__ import annotations

import threading
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

BEST_SAMPLE_FANOUT = 10  # best-sample search reads this many nearest samples per wanted person
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
    def __init__(self, url: str, scoring: str = "centroid") -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}")
        self.url = url
        self.scoring = scoring
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

    # ---- the Gallery interface
    def create(
        self, name: str, metadata: dict, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity:
        return self.create_many([(name, metadata, embeddings, samples)])[0]

    def create_many(self, people: Sequence[Person]) -> list[Identity]:
        """Enroll several people in one transaction: all stored, or none."""
        if any(not len(as_vectors(embeddings)) for _, _, embeddings, *_ in people):
            raise ValueError("every person needs at least one embedding")

        def operation(cursor):
            made = []
            for name, metadata, embeddings, *rest in people:
                identity_id, stamp = new_id(), now()
                cursor.execute(
                    "INSERT INTO identities (id, name, metadata, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)",
                    (identity_id, name, Jsonb(metadata), stamp, stamp),
                )
                ids = self._insert_faces(cursor, identity_id, embeddings, rest[0] if rest else None, stamp)
                self._refresh_centroid(cursor, identity_id)
                made.append(replace(self._identity(cursor, identity_id), face_ids=ids))
            return made

        return self._run(operation)

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
            cursor.execute(f"SET LOCAL hnsw.ef_search = {max(40, top_k * BEST_SAMPLE_FANOUT)}")
            results = []
            for vector in vectors:
                if self.scoring == "centroid":
                    cursor.execute(
                        "SELECT id, name, 1 - (centroid <=> %s) FROM identities WHERE centroid IS NOT NULL"
                        " ORDER BY centroid <=> %s LIMIT %s",
                        (vector, vector, top_k),
                    )
                    results.append([Match(r[0], r[1], float(r[2])) for r in cursor.fetchall()])
                    continue
                cursor.execute(
                    "SELECT n.identity_id, i.name, MAX(n.similarity) AS best FROM ("
                    "  SELECT identity_id, 1 - (embedding <=> %s) AS similarity FROM faces"
                    "  ORDER BY embedding <=> %s LIMIT %s) n"
                    " JOIN identities i ON i.id = n.identity_id GROUP BY n.identity_id, i.name"
                    " ORDER BY best DESC LIMIT %s",
                    (vector, vector, top_k * BEST_SAMPLE_FANOUT, top_k),
                )
                results.append([Match(r[0], r[1], float(r[2])) for r in cursor.fetchall()])
            return results

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

"""The embedded gallery: one SQLite file, WAL, one transaction per operation, versioned schema.

Search runs on an in-memory index (`gallery.live_index`: exact below a size, sign codes
above it, persisted beside the file) kept in step with the database through a generation
counter and a table of the people each write touched: after this process's own commits and
whenever another process (a replica on the same file) committed, only the people changed
since are read again. The schema and those reads are in `gallery.sqlite_schema`; each sample's
measurements, crop and model in `gallery.samples`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from gallery.index import FaceIndex, PersonRows
from gallery.live_index import IndexConfig, LiveIndex, Stamp
from gallery.samples import SAMPLE_COLUMNS, STORED_FACE_SQL, sample_values, samples_for, stored_face
from gallery.sqlite_schema import (
    IDENTITY_SQL,
    group_rows,
    identity_from_row,
    migrate,
    read_everyone,
    read_model,
    read_stamp,
    write_model,
)
from gallery.sqlite_schema import MIGRATIONS as MIGRATIONS  # re-exported: tests read it here
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

INSERT_FACE_SQL = (
    f"INSERT INTO faces (identity_id, embedding, created_at, model_sha256, {', '.join(SAMPLE_COLUMNS)})"
    f" VALUES (?, ?, ?, COALESCE(?, (SELECT value FROM gallery_meta WHERE key = 'model_sha256'))"
    f"{', ?' * len(SAMPLE_COLUMNS)})"
)

class SqliteGallery:
    """Embedded gallery: one SQLite file, WAL, every operation one transaction."""

    def __init__(self, path: Path, scoring: str = "centroid", index: str | IndexConfig = "auto") -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}")
        self.scoring = scoring
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            migrate(self._db)
        config = index if isinstance(index, IndexConfig) else IndexConfig(mode=index)
        if config.folder is None:  # the approximate index lives beside the database
            config = IndexConfig(config.mode, config.ann_min_faces, config.parameters, index_folder(path),
                                 config.save_interval_s)
        self.index = LiveIndex(self, self._lock, scoring, config)

    # ---- plumbing
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")  # a committed enrollment survives power loss too
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _write(self, operation, touched):
        """Run `operation(db)` in one IMMEDIATE transaction that also records `touched(result)`'s people
        under a new generation. The index catches up at the next search (a bulk load of many
        writes pays for it once)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = operation(self._db)
                self._record_changes(self._db, touched(result))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return result

    @staticmethod
    def _record_changes(db: sqlite3.Connection, identity_ids: Iterable[str]) -> None:
        db.execute("UPDATE gallery_meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        generation = int(db.execute("SELECT value FROM gallery_meta WHERE key = 'generation'").fetchone()[0])
        db.executemany(
            "INSERT INTO identity_changes (identity_id, generation) VALUES (?, ?)"
            " ON CONFLICT(identity_id) DO UPDATE SET generation = excluded.generation",
            [(identity_id, generation) for identity_id in identity_ids],
        )

    def _identity(self, db: sqlite3.Connection, identity_id: str) -> Identity:
        row = db.execute(IDENTITY_SQL + " WHERE i.id = ?", (identity_id,)).fetchone()
        if row is None:
            raise IdentityNotFound(identity_id)
        return identity_from_row(row)

    @staticmethod
    def _insert_faces(
        db: sqlite3.Connection, people: Sequence[tuple[str, np.ndarray, list[Sample]]], stamp: str
    ) -> list[tuple[int, ...]]:
        """Store each (identity id, (K, 512) vectors, K samples); the new face ids of each, in order.

        Inside the IMMEDIATE transaction nobody else inserts, and AUTOINCREMENT ids only grow, so
        the rows above the largest id before are these, in the order they were inserted.
        """
        flat = [(identity_id, vector, sample) for identity_id, vectors, samples in people
                for vector, sample in zip(vectors, samples, strict=True)]
        before = db.execute("SELECT COALESCE(MAX(id), 0) FROM faces").fetchone()[0]
        db.executemany(
            INSERT_FACE_SQL,
            [(identity_id, vector.tobytes(), stamp, sample.model_sha256, *sample_values(sample))
             for identity_id, vector, sample in flat],
        )
        ids = [row[0] for row in db.execute("SELECT id FROM faces WHERE id > ? ORDER BY id", (before,))]
        if len(ids) != len(flat):
            raise RuntimeError(f"stored {len(flat)} face samples but found {len(ids)} new rows")
        db.executemany(
            "INSERT INTO face_crops (face_id, crop) VALUES (?, ?)",
            [(face_id, sample.crop) for face_id, (_, _, sample) in zip(ids, flat, strict=True) if sample.crop],
        )
        out, start = [], 0
        for _, vectors, _ in people:
            out.append(tuple(ids[start : start + len(vectors)]))
            start += len(vectors)
        return out

    # ---- the index's view of the database (gallery.live_index.Source)
    def stamp(self) -> Stamp:
        with self._lock:
            return read_stamp(self._db)

    def changes(self, since: int) -> tuple[Stamp, list[PersonRows]]:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: the stamp and the rows agree
            try:
                stamp = read_stamp(self._db)
                rows = self._db.execute(
                    "SELECT c.identity_id, i.name, f.id, f.embedding FROM identity_changes c"
                    " LEFT JOIN identities i ON i.id = c.identity_id LEFT JOIN faces f ON f.identity_id = i.id"
                    " WHERE c.generation > ? ORDER BY c.identity_id, f.id",
                    (since,),
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        return stamp, group_rows(rows)

    def everyone(self) -> tuple[Stamp, FaceIndex]:
        """Read on a connection of its own: the gallery's stays free for writes meanwhile."""
        db = self._connect()
        try:
            db.execute("BEGIN")
            stamp = read_stamp(db)
            index = read_everyone(db)
            db.execute("COMMIT")
        finally:
            db.close()
        index.generation = stamp.generation
        return stamp, index

    def fetch(self, identity_ids: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            marks = ",".join("?" * len(identity_ids))
            rows = self._db.execute(
                f"SELECT identity_id, NULL, id, embedding FROM faces WHERE identity_id IN ({marks})"
                " ORDER BY identity_id, id",
                identity_ids,
            ).fetchall()
        return {identity_id: vectors for identity_id, _, _, vectors in group_rows(rows)}

    # ---- the Gallery interface
    def create(
        self, name: str, metadata: dict, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity:
        return self.create_many([(name, metadata, embeddings, samples)])[0]

    def create_many(self, people: Sequence[Person]) -> list[Identity]:
        """Enroll several people in one transaction (bulk loads): all stored, or none."""
        stamp = now()
        made = []
        for name, metadata, embeddings, *rest in people:
            vectors = as_vectors(embeddings)
            made.append((new_id(), name, metadata, vectors, samples_for(len(vectors), rest[0] if rest else None)))
        if any(not len(vectors) for _, _, _, vectors, _ in made):
            raise ValueError("every person needs at least one embedding")

        def operation(db):
            db.executemany(
                "INSERT INTO identities (id, name, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                [(identity_id, name, json.dumps(metadata), stamp, stamp) for identity_id, name, metadata, *_ in made],
            )
            face_ids = self._insert_faces(db, [(i, vectors, samples) for i, _, _, vectors, samples in made], stamp)
            return [Identity(identity_id, name, metadata, len(vectors), stamp, ids)
                    for (identity_id, name, metadata, vectors, _), ids in zip(made, face_ids, strict=True)]

        return self._write(operation, lambda created: [identity.id for identity in created])

    def add_faces(
        self, identity_id: str, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity:
        vectors = as_vectors(embeddings)
        chosen = samples_for(len(vectors), samples)

        def operation(db):
            self._identity(db, identity_id)
            stamp = now()
            [ids] = self._insert_faces(db, [(identity_id, vectors, chosen)], stamp)
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (stamp, identity_id))
            return replace(self._identity(db, identity_id), face_ids=ids)

        return self._write(operation, lambda found: [found.id])

    def faces(self, identity_id: str) -> list[StoredFace]:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._identity(self._db, identity_id)
                rows = self._db.execute(
                    STORED_FACE_SQL + " FROM faces f WHERE f.identity_id = ? ORDER BY f.id", (identity_id,)
                ).fetchall()
            finally:
                self._db.execute("COMMIT")
        return [stored_face(row) for row in rows]

    def delete_face(self, identity_id: str, face_id: int) -> Identity:
        def operation(db):
            self._identity(db, identity_id)
            owner = db.execute("SELECT identity_id FROM faces WHERE id = ?", (face_id,)).fetchone()
            if owner is None or owner[0] != identity_id:
                raise FaceNotFound(identity_id, face_id)
            if db.execute("SELECT COUNT(*) FROM faces WHERE identity_id = ?", (identity_id,)).fetchone()[0] == 1:
                raise LastFace(identity_id, face_id)
            db.execute("DELETE FROM faces WHERE id = ?", (face_id,))
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), identity_id))
            return self._identity(db, identity_id)

        return self._write(operation, lambda _: [identity_id])

    def get(self, identity_id: str) -> Identity:
        with self._lock:
            return self._identity(self._db, identity_id)

    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]:
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            rows = self._db.execute(
                IDENTITY_SQL + " ORDER BY i.created_at, i.id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return total, [identity_from_row(row) for row in rows]

    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity:
        def operation(db):
            self._identity(db, identity_id)
            if name is not None:
                db.execute("UPDATE identities SET name = ? WHERE id = ?", (name, identity_id))
            if metadata is not None:
                db.execute("UPDATE identities SET metadata = ? WHERE id = ?", (json.dumps(metadata), identity_id))
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), identity_id))
            return self._identity(db, identity_id)

        return self._write(operation, lambda found: [found.id] if name is not None else [])

    def merge(self, target_id: str, source_id: str) -> Identity:
        def operation(db):
            self._identity(db, target_id)
            self._identity(db, source_id)
            db.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (target_id, source_id))
            db.execute("DELETE FROM identities WHERE id = ?", (source_id,))
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), target_id))
            return self._identity(db, target_id)

        return self._write(operation, lambda _: [target_id, source_id])

    def delete(self, identity_id: str) -> None:
        def operation(db):
            if db.execute("DELETE FROM identities WHERE id = ?", (identity_id,)).rowcount == 0:
                raise IdentityNotFound(identity_id)

        self._write(operation, lambda _: [identity_id])

    def delete_all(self) -> int:
        def operation(db):
            db.execute("DELETE FROM faces")
            db.execute("DELETE FROM identity_changes")
            deleted = db.execute("DELETE FROM identities").rowcount
            # the wipe is its own generation: an index older than it rebuilds instead of catching up
            db.execute(
                "UPDATE gallery_meta SET value = CAST((SELECT value FROM gallery_meta WHERE key = 'generation')"
                " AS INTEGER) + 1 WHERE key = 'reset_generation'"
            )
            return deleted

        return self._write(operation, lambda _: [])

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]:
        return self.index.search(queries, top_k)

    def score_identity(self, identity_id: str, queries: np.ndarray) -> list[Match]:
        with self._lock:
            self._db.execute("BEGIN")  # one snapshot: the person and their samples agree
            try:
                identity = self._identity(self._db, identity_id)
                vectors = self.fetch([identity_id]).get(identity_id)
            finally:
                self._db.execute("COMMIT")
        if vectors is None:  # an identity always has a sample; a concurrent delete of the last would be this
            raise IdentityNotFound(identity_id)
        # Scored by the index's own code, on the person's rows alone: the same numbers a search gives them.
        person = FaceIndex.build([(identity.id, identity.name, np.arange(len(vectors)), vectors)])
        scores = person.scores(queries, self.scoring)[:, 0]
        return [Match(identity.id, identity.name, float(score)) for score in scores]

    def prepare(self) -> None:
        self.index.sync()

    def index_status(self) -> dict:
        return self.index.status()

    def face_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]

    # ---- which recognizer made the embeddings (every change through _write: the index catches up)
    def model(self) -> ModelFingerprint | None:
        with self._lock:
            return read_model(self._db)

    def claim_model(self, served: ModelFingerprint) -> tuple[ModelFingerprint, int | None]:
        def operation(db):
            recorded = read_model(db)
            if recorded is not None:
                return recorded, None
            write_model(db, served)
            stamped = db.execute("UPDATE faces SET model_sha256 = ? WHERE model_sha256 IS NULL", (served.sha256,))
            return served, stamped.rowcount

        return self._write(operation, lambda _: [])  # no embedding changes

    def model_status(self, sha256: str) -> ModelStatus:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                total, pending = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(model_sha256 IS NOT ?), 0) FROM faces", (sha256,)
                ).fetchone()
                uncropped, people = self._db.execute(  # the crop looked up for the pending samples only
                    "SELECT COUNT(*), COUNT(DISTINCT identity_id) FROM faces f WHERE f.model_sha256 IS NOT ?"
                    " AND NOT EXISTS (SELECT 1 FROM face_crops c WHERE c.face_id = f.id)",
                    (sha256,),
                ).fetchone()
            finally:
                self._db.execute("COMMIT")
        return ModelStatus(total, pending, uncropped, people)

    def pending_crops(self, sha256: str, after_id: int, limit: int) -> list[PendingCrop]:
        with self._lock:
            rows = self._db.execute(
                "SELECT f.id, f.identity_id, c.crop FROM faces f JOIN face_crops c ON c.face_id = f.id"
                " WHERE f.id > ? AND f.model_sha256 IS NOT ? ORDER BY f.id LIMIT ?",
                (after_id, sha256, limit),
            ).fetchall()
        return [PendingCrop(face_id, identity_id, bytes(crop)) for face_id, identity_id, crop in rows]

    def replace_embeddings(self, updates: Sequence[tuple[int, np.ndarray]], sha256: str) -> int:
        def operation(db):
            owners = []  # the identity of every sample updated (a sample deleted meanwhile has none)
            for face_id, vector in updates:
                row = db.execute(
                    "UPDATE faces SET embedding = ?, model_sha256 = ? WHERE id = ? RETURNING identity_id",
                    (as_vectors(vector)[0].tobytes(), sha256, face_id),
                ).fetchone()
                if row is not None:
                    owners.append(row[0])
            return owners

        return len(self._write(operation, lambda owners: sorted(set(owners))))

    def finish_model_change(self, target: ModelFingerprint) -> None:
        def operation(db):
            remaining = db.execute("SELECT COUNT(*) FROM faces WHERE model_sha256 IS NOT ?", (target.sha256,))
            if (count := remaining.fetchone()[0]) > 0:
                raise ModelChangeIncomplete(count, target)
            write_model(db, target)

        self._write(operation, lambda _: [])

    def close(self) -> None:
        self.index.close()
        with self._lock:
            self._db.close()


def index_folder(db_path: Path) -> Path:
    """Where the approximate index of the gallery at `db_path` is saved: `<file>.index/` beside it."""
    return db_path.with_name(db_path.name + ".index")

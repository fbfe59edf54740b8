"""The embedded gallery: one SQLite file, WAL, one transaction per operation, versioned schema.

Search is exact cosine over an in-memory matrix of every stored face sample
(`gallery.index.FaceIndex`), kept in step with the database: rebuilt at start-up and
whenever SQLite's `data_version` says another connection (another process) committed,
patched in place after this process's own commits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gallery.index import FaceIndex
from gallery.store import SCORINGS, Identity, IdentityNotFound, Match, as_vectors, new_id, now

# --------------------------------------------------------------------------- SQLite
MIGRATIONS: list[str] = [
    # 1: people and their face samples
    """
    CREATE TABLE identities (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE faces (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        embedding BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX faces_by_identity ON faces(identity_id);
    CREATE INDEX identities_by_created ON identities(created_at, id);
    """,
]


# One identity with its sample count; callers add WHERE / ORDER BY.
IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created_at, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
    " FROM identities i"
)


def _identity_from_row(row: Sequence) -> Identity:
    return Identity(row[0], row[1], json.loads(row[2]), row[4], row[3])


class SqliteGallery:
    """Embedded gallery: one SQLite file, WAL, every operation one transaction."""

    def __init__(self, path: Path, scoring: str = "centroid") -> None:
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}")
        self.scoring = scoring
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed enrollment survives power loss too
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._index = FaceIndex()
        self._index_version: int | None = None

    # ---- plumbing
    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    for statement in filter(str.strip, script.split(";")):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version={number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, operation, update_index):
        """Run `operation(db)` in one IMMEDIATE transaction, then `update_index(index, result)`.

        Our own commits do not change `data_version`, so the index is patched in place;
        commits of other processes are caught by `_current_index`.
        """
        with self._lock:
            index = self._current_index()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = operation(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            update_index(index, result)
            return result

    def _identity(self, db: sqlite3.Connection, identity_id: str) -> Identity:
        row = db.execute(IDENTITY_SQL + " WHERE i.id = ?", (identity_id,)).fetchone()
        if row is None:
            raise IdentityNotFound(identity_id)
        return _identity_from_row(row)

    @staticmethod
    def _insert_faces(db: sqlite3.Connection, identity_id: str, embeddings: np.ndarray) -> None:
        stamp = now()
        db.executemany(
            "INSERT INTO faces (identity_id, embedding, created_at) VALUES (?, ?, ?)",
            [(identity_id, vector.tobytes(), stamp) for vector in as_vectors(embeddings)],
        )

    # ---- the Gallery interface
    def create(self, name: str, metadata: dict, embeddings: np.ndarray) -> Identity:
        identity_id, stamp = new_id(), now()

        def operation(db):
            db.execute(
                "INSERT INTO identities (id, name, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (identity_id, name, json.dumps(metadata), stamp, stamp),
            )
            self._insert_faces(db, identity_id, embeddings)
            return self._identity(db, identity_id)

        return self._write(operation, lambda index, made: index.add(made.id, made.name, embeddings))

    def add_faces(self, identity_id: str, embeddings: np.ndarray) -> Identity:
        def operation(db):
            self._identity(db, identity_id)
            self._insert_faces(db, identity_id, embeddings)
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), identity_id))
            return self._identity(db, identity_id)

        return self._write(operation, lambda index, found: index.add(found.id, found.name, embeddings))

    def get(self, identity_id: str) -> Identity:
        with self._lock:
            return self._identity(self._db, identity_id)

    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]:
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            rows = self._db.execute(
                IDENTITY_SQL + " ORDER BY i.created_at, i.id LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return total, [_identity_from_row(row) for row in rows]

    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity:
        def operation(db):
            self._identity(db, identity_id)
            if name is not None:
                db.execute("UPDATE identities SET name = ? WHERE id = ?", (name, identity_id))
            if metadata is not None:
                db.execute("UPDATE identities SET metadata = ? WHERE id = ?", (json.dumps(metadata), identity_id))
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), identity_id))
            return self._identity(db, identity_id)

        return self._write(operation, lambda index, found: index.rename(found.id, found.name))

    def merge(self, target_id: str, source_id: str) -> Identity:
        def operation(db):
            self._identity(db, target_id)
            self._identity(db, source_id)
            db.execute("UPDATE faces SET identity_id = ? WHERE identity_id = ?", (target_id, source_id))
            db.execute("DELETE FROM identities WHERE id = ?", (source_id,))
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), target_id))
            return self._identity(db, target_id)

        return self._write(operation, lambda index, _: index.merge(target_id, source_id))

    def delete(self, identity_id: str) -> None:
        def operation(db):
            if db.execute("DELETE FROM identities WHERE id = ?", (identity_id,)).rowcount == 0:
                raise IdentityNotFound(identity_id)

        self._write(operation, lambda index, _: index.remove(identity_id))

    def delete_all(self) -> int:
        def operation(db):
            db.execute("DELETE FROM faces")
            return db.execute("DELETE FROM identities").rowcount

        def clear(index: FaceIndex, _) -> None:
            self._index = FaceIndex()

        return self._write(operation, clear)

    def _current_index(self) -> FaceIndex:
        with self._lock:
            # data_version changes when *another* connection commits (another API process).
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if self._index_version != version:
                rows = self._db.execute(
                    "SELECT f.identity_id, i.name, f.embedding FROM faces f JOIN identities i ON i.id = f.identity_id"
                    " ORDER BY f.identity_id, f.id"
                ).fetchall()
                self._index = FaceIndex.build(rows)
                self._index_version = version
            return self._index

    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]:
        with self._lock:  # writers patch the index in place: never read it half-patched
            return self._current_index().search(queries, top_k, self.scoring)

    def face_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

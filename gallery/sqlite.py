"""The persistent gallery of enrolled people: storage and search.

`Gallery` is the interface the API uses; `SqliteGallery` is the embedded default
(one file, WAL, one transaction per operation, versioned schema) and
`gallery_pg.PgGallery` the shared PostgreSQL/pgvector one for several replicas.

Search is exact cosine over an in-memory matrix of every stored face sample, kept in
step with the database: rebuilt at start-up and whenever SQLite's `data_version`
says another connection (another process) committed, patched in place after this
process's own commits. A person is scored by the cosine to the normalised centroid
of their samples (default) or by their best sample: on LFW both name every enrolled
person, and the centroid calls more strangers unknown at every threshold (README).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

EMBEDDING_DIM = 512
SCORINGS = ("centroid", "best_sample")


class IdentityNotFound(Exception):
    """No identity with this id (HTTP 404)."""

    def __init__(self, identity_id: str) -> None:
        super().__init__(f"no identity with id {identity_id!r}")
        self.message = str(self)


@dataclass(frozen=True)
class Identity:
    id: str
    name: str
    metadata: dict
    num_faces: int
    created_at: str


@dataclass(frozen=True)
class Match:
    id: str
    name: str
    similarity: float


class Gallery(Protocol):
    def create(self, name: str, metadata: dict, embeddings: np.ndarray) -> Identity: ...
    def add_faces(self, identity_id: str, embeddings: np.ndarray) -> Identity: ...
    def get(self, identity_id: str) -> Identity: ...
    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]: ...
    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity: ...
    def merge(self, target_id: str, source_id: str) -> Identity: ...
    def delete(self, identity_id: str) -> None: ...
    def delete_all(self) -> int: ...
    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]: ...
    def face_count(self) -> int: ...
    def close(self) -> None: ...


def now() -> str:
    # Microseconds: identities are listed by creation time, and two enrolled in the same
    # millisecond would otherwise come back in the random order of their ids.
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def as_vectors(embeddings: np.ndarray) -> np.ndarray:
    """(N, 512) float32, rows unit length: what is stored and searched."""
    vectors = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- in-memory search
@dataclass
class FaceIndex:
    """Every stored sample as one matrix; people scored by their best sample.

    vectors (N, 512) float32 unit rows; owners (N,) index into ids/names. Updated in
    place after this process's own commits, rebuilt when another process commits.
    """

    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    owners: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    _centroids: np.ndarray | None = None  # cache, dropped on every change
    _capacity: int = 0  # rows allocated in the buffers behind `vectors` / `owners`
    _vector_buffer: np.ndarray | None = None
    _owner_buffer: np.ndarray | None = None

    def centroids(self) -> np.ndarray:
        """(people, 512) unit-length mean of each person's samples."""
        if self._centroids is None:
            sums = np.zeros((len(self.ids), EMBEDDING_DIM), np.float32)
            np.add.at(sums, self.owners, self.vectors)
            self._centroids = as_vectors(sums)
        return self._centroids

    @staticmethod
    def build(rows: Sequence[tuple[str, str, bytes]]) -> FaceIndex:
        """rows: (identity id, name, float32 embedding bytes)."""
        index = FaceIndex()
        if not rows:
            return index
        positions: dict[str, int] = {}
        owners = np.empty(len(rows), np.int64)
        for row, (identity_id, name, _) in enumerate(rows):
            if identity_id not in positions:
                positions[identity_id] = len(index.ids)
                index.ids.append(identity_id)
                index.names.append(name)
            owners[row] = positions[identity_id]
        index.vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, EMBEDDING_DIM).copy()
        index.owners = owners
        return index

    def _position(self, identity_id: str) -> int | None:
        try:
            return self.ids.index(identity_id)
        except ValueError:
            return None

    def add(self, identity_id: str, name: str, vectors: np.ndarray) -> None:
        position = self._position(identity_id)
        if position is None:
            position = len(self.ids)
            self.ids.append(identity_id)
            self.names.append(name)
        added = as_vectors(vectors)
        count, needed = self.vectors.shape[0], self.vectors.shape[0] + added.shape[0]
        if self._capacity < needed:  # grow geometrically: appends stay amortised O(1)
            self._capacity = max(needed, 2 * self._capacity, 1024)
            grown = np.empty((self._capacity, EMBEDDING_DIM), np.float32)
            grown[:count] = self.vectors
            owners = np.empty(self._capacity, np.int64)
            owners[:count] = self.owners
            self._vector_buffer, self._owner_buffer = grown, owners
        self._vector_buffer[count:needed] = added
        self._owner_buffer[count:needed] = position
        self.vectors = self._vector_buffer[:needed]
        self.owners = self._owner_buffer[:needed]
        self._centroids = None

    def rename(self, identity_id: str, name: str) -> None:
        position = self._position(identity_id)
        if position is not None:
            self.names[position] = name

    def remove(self, identity_id: str) -> None:
        position = self._position(identity_id)
        if position is None:
            return
        keep = self.owners != position
        self.vectors, self.owners = self.vectors[keep], self.owners[keep]
        self._capacity = 0  # fresh arrays: the next add reallocates
        self.owners[self.owners > position] -= 1
        del self.ids[position], self.names[position]
        self._centroids = None

    def merge(self, target_id: str, source_id: str) -> None:
        target, source = self._position(target_id), self._position(source_id)
        if target is not None and source is not None:
            self.owners[self.owners == source] = target
        self.remove(source_id)
        self._centroids = None

    def search(self, queries: np.ndarray, top_k: int, scoring: str = "centroid") -> list[list[Match]]:
        """For each query (Q, 512): the top_k people, best first, by centroid or best-sample cosine."""
        queries = as_vectors(queries)
        if not self.ids:
            return [[] for _ in range(queries.shape[0])]
        if scoring == "centroid":
            best = queries @ self.centroids().T  # (Q, people)
        else:
            similarities = queries @ self.vectors.T  # (Q, faces)
            best = np.full((queries.shape[0], len(self.ids)), -np.inf, np.float32)
            np.maximum.at(best, (slice(None), self.owners), similarities)
        k = min(top_k, len(self.ids))
        if k < len(self.ids):  # partial selection first: O(people) instead of a full sort
            candidates = np.argpartition(-best, k - 1, axis=1)[:, :k]
            picked = np.take_along_axis(best, candidates, axis=1)
            order = np.take_along_axis(candidates, np.argsort(-picked, axis=1, kind="stable"), axis=1)
        else:
            order = np.argsort(-best, axis=1, kind="stable")
        return [[Match(self.ids[p], self.names[p], float(best[q, p])) for p in row] for q, row in enumerate(order)]


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


def open_gallery(db_path: Path, url: str | None, scoring: str = "centroid") -> Gallery:
    """SQLite at `db_path`, or PostgreSQL/pgvector when `url` is a postgresql:// URL."""
    if url:
        from gallery_pg import PgGallery

        return PgGallery(url, scoring)
    return SqliteGallery(db_path, scoring)

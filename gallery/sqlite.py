"""The embedded gallery: one SQLite file, WAL, one transaction per operation, versioned schema.

Search runs on an in-memory index (`gallery.live_index`: exact below a size, sign codes
above it, persisted beside the file) kept in step with the database through a generation
counter and a table of the people each write touched: after this process's own commits and
whenever another process (a replica on the same file) committed, only the people changed
since are read again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from gallery.index import FaceIndex, PersonRows
from gallery.live_index import IndexConfig, LiveIndex, Stamp
from gallery.store import EMBEDDING_DIM, SCORINGS, Identity, IdentityNotFound, Match, as_vectors, new_id, now

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
    # 2: what the search index needs to catch up: a generation counter bumped by every write,
    # the generation of the last wipe, the lineage (epoch, set per database and per restore),
    # and the people each write touched.
    """
    CREATE TABLE gallery_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    INSERT INTO gallery_meta (key, value) VALUES ('generation', '0'), ('reset_generation', '0');
    CREATE TABLE identity_changes (
        identity_id TEXT PRIMARY KEY,
        generation INTEGER NOT NULL
    );
    CREATE INDEX identity_changes_by_generation ON identity_changes(generation);
    """,
]
READ_CHUNK = 20_000  # rows fetched at a time when reading every sample


def migrate(db: sqlite3.Connection) -> None:
    """Bring `db` to the newest schema in one IMMEDIATE transaction (also used on a backup being restored)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number}")
        db.execute("INSERT OR IGNORE INTO gallery_meta (key, value) VALUES ('epoch', ?)", (uuid.uuid4().hex,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def new_epoch(db: sqlite3.Connection) -> None:
    """Mark `db` as a new lineage (a restored backup): indexes made before cannot catch up with it."""
    db.execute("UPDATE gallery_meta SET value = ? WHERE key = 'epoch'", (uuid.uuid4().hex,))


def read_stamp(db: sqlite3.Connection) -> Stamp:
    meta = dict(db.execute("SELECT key, value FROM gallery_meta").fetchall())
    return Stamp(meta["epoch"], int(meta["generation"]), int(meta["reset_generation"]))


def _group(rows: Iterable[Sequence]) -> list[PersonRows]:
    """(identity id, name, face id, embedding bytes) rows, grouped by identity -> one PersonRows each.

    A row with a NULL face id stands for a person with no samples (deleted): empty arrays.
    """
    people: list[PersonRows] = []
    current, name, keys, blobs = None, "", [], []
    for identity_id, row_name, face_id, blob in [*rows, (None, None, None, None)]:
        if identity_id != current:
            if current is not None:
                vectors = np.frombuffer(b"".join(blobs), np.float32).reshape(-1, EMBEDDING_DIM)
                people.append((current, name or "", np.asarray(keys, np.int64), vectors))
            current, name, keys, blobs = identity_id, row_name, [], []
        if face_id is not None:
            keys.append(face_id)
            blobs.append(blob)
    return people



# One identity with its sample count; callers add WHERE / ORDER BY.
IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created_at, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
    " FROM identities i"
)


def read_everyone(db: sqlite3.Connection) -> FaceIndex:
    """An exact index of every stored sample (call inside a read transaction), read in chunks."""
    cursor = db.execute(
        "SELECT f.identity_id, i.name, f.id, f.embedding FROM faces f JOIN identities i ON i.id = f.identity_id"
        " ORDER BY f.identity_id, f.id"
    )
    ids: list[str] = []
    names: list[str] = []
    counts: list[int] = []
    keys: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    while chunk := cursor.fetchmany(READ_CHUNK):
        for identity_id, name, _, _ in chunk:
            if not ids or ids[-1] != identity_id:
                ids.append(identity_id)
                names.append(name)
                counts.append(0)
            counts[-1] += 1
        keys.append(np.fromiter((row[2] for row in chunk), np.int64, len(chunk)))
        vectors.append(np.frombuffer(b"".join(row[3] for row in chunk), np.float32).reshape(-1, EMBEDDING_DIM))
    if not ids:
        return FaceIndex()
    return FaceIndex.from_flat(ids, names, np.asarray(counts), np.concatenate(keys), np.concatenate(vectors))


def _identity_from_row(row: Sequence) -> Identity:
    return Identity(row[0], row[1], json.loads(row[2]), row[4], row[3])


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
        return _identity_from_row(row)

    @staticmethod
    def _insert_faces(db: sqlite3.Connection, identity_id: str, embeddings: np.ndarray, stamp: str) -> None:
        db.executemany(
            "INSERT INTO faces (identity_id, embedding, created_at) VALUES (?, ?, ?)",
            [(identity_id, vector.tobytes(), stamp) for vector in as_vectors(embeddings)],
        )

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
        return stamp, _group(rows)

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
        return {identity_id: vectors for identity_id, _, _, vectors in _group(rows)}

    # ---- the Gallery interface
    def create(self, name: str, metadata: dict, embeddings: np.ndarray) -> Identity:
        return self.create_many([(name, metadata, embeddings)])[0]

    def create_many(self, people: Sequence[tuple[str, dict, np.ndarray]]) -> list[Identity]:
        """Enroll several people in one transaction (bulk loads): all stored, or none."""
        stamp = now()
        made = [(new_id(), name, metadata, as_vectors(embeddings)) for name, metadata, embeddings in people]
        if any(not len(vectors) for *_, vectors in made):
            raise ValueError("every person needs at least one embedding")

        def operation(db):
            db.executemany(
                "INSERT INTO identities (id, name, metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                [(identity_id, name, json.dumps(metadata), stamp, stamp) for identity_id, name, metadata, _ in made],
            )
            db.executemany(
                "INSERT INTO faces (identity_id, embedding, created_at) VALUES (?, ?, ?)",
                [(identity_id, row.tobytes(), stamp) for identity_id, _, _, vectors in made for row in vectors],
            )
            return [Identity(identity_id, name, metadata, len(vectors), stamp)
                    for identity_id, name, metadata, vectors in made]

        return self._write(operation, lambda created: [identity.id for identity in created])

    def add_faces(self, identity_id: str, embeddings: np.ndarray) -> Identity:
        def operation(db):
            self._identity(db, identity_id)
            self._insert_faces(db, identity_id, embeddings, now())
            db.execute("UPDATE identities SET updated_at = ? WHERE id = ?", (now(), identity_id))
            return self._identity(db, identity_id)

        return self._write(operation, lambda found: [found.id])

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

    def prepare(self) -> None:
        self.index.sync()

    def index_status(self) -> dict:
        return self.index.status()

    def face_count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]

    def close(self) -> None:
        self.index.close()
        with self._lock:
            self._db.close()


def index_folder(db_path: Path) -> Path:
    """Where the approximate index of the gallery at `db_path` is saved: `<file>.index/` beside it."""
    return db_path.with_name(db_path.name + ".index")

"""The SQLite gallery's schema (versioned migrations) and the reads its search index is built from.

`gallery.sqlite` runs these; `gallery.backup` checks a file's schema against `MIGRATIONS` and
migrates a restored backup with `migrate`.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence

import numpy as np

from gallery.index import FaceIndex, PersonRows
from gallery.live_index import Stamp
from gallery.store import EMBEDDING_DIM, Identity, ModelFingerprint

# Every migration is split on ";" and run statement by statement: no ";" inside a statement.
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
    # 3: per-sample faces and the model that made them (issue 22): each sample's measurements at
    # enrollment (NULL for the samples stored before), the recognizer (sha256 of its ONNX file)
    # that made its embedding, and its aligned crop in a table of its own, so that reading every
    # embedding reads no crop. The gallery's recorded model is gallery_meta's model_network and
    # model_sha256, written by the first start that sees the served model.
    """
    ALTER TABLE faces ADD COLUMN face_size REAL;
    ALTER TABLE faces ADD COLUMN sharpness REAL;
    ALTER TABLE faces ADD COLUMN detection_score REAL;
    ALTER TABLE faces ADD COLUMN yaw REAL;
    ALTER TABLE faces ADD COLUMN pitch REAL;
    ALTER TABLE faces ADD COLUMN roll REAL;
    ALTER TABLE faces ADD COLUMN source TEXT;
    ALTER TABLE faces ADD COLUMN model_sha256 TEXT;
    CREATE TABLE face_crops (
        face_id INTEGER PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
        crop BLOB NOT NULL
    )
    """,
]
READ_CHUNK = 20_000  # rows fetched at a time when reading every sample
# One identity with its sample count; callers add WHERE / ORDER BY.
IDENTITY_SQL = (
    "SELECT i.id, i.name, i.metadata, i.created_at, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.id)"
    " FROM identities i"
)


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


def read_model(db: sqlite3.Connection) -> ModelFingerprint | None:
    meta = dict(db.execute("SELECT key, value FROM gallery_meta WHERE key LIKE 'model_%'").fetchall())
    return ModelFingerprint(meta.get("model_network", ""), meta["model_sha256"]) if "model_sha256" in meta else None


def write_model(db: sqlite3.Connection, model: ModelFingerprint) -> None:
    db.executemany(
        "INSERT INTO gallery_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [("model_network", model.network), ("model_sha256", model.sha256)],
    )


def group_rows(rows: Iterable[Sequence]) -> list[PersonRows]:
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


def identity_from_row(row: Sequence) -> Identity:
    return Identity(row[0], row[1], json.loads(row[2]), row[4], row[3])

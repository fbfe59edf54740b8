"""Back up, verify and restore the SQLite gallery (`GALLERY_DB`) while the API keeps running.

    python -m gallery.backup backup  [--db data/gallery.db] [--to backups/gallery-<UTC>.db]
    python -m gallery.backup verify  backups/gallery-20260101T000000Z.db
    python -m gallery.backup restore --from backups/gallery-20260101T000000Z.db [--db data/gallery.db]

Every copy goes through SQLite's online backup API (`Connection.backup`), never a file copy:
the gallery is in WAL mode, so its committed state lives in `gallery.db` *and* `gallery.db-wal`,
and copying the files while the API writes can capture half a transaction.

* backup: one backup step inside one read transaction of the live database = one consistent
  snapshot (WAL readers do not block the API's writers). The copy is written to a temporary file
  next to the destination, checked (`PRAGMA integrity_check`, foreign keys, the schema this
  gallery.py creates), converted to a self-contained rollback-journal file, fsynced, and only
  then renamed into place: a backup file that exists is a complete, verified one, readable by
  its owner only (mode 0600).
* restore: the source is first copied into a temporary staging file and the *staging copy* is
  checked (so what is verified is exactly what gets restored), then copied with the backup API
  into the live gallery through an ordinary connection. SQLite applies that as one write
  transaction of the target: other connections (a running API) keep reading their old snapshot
  until it commits and then see the whole restored gallery; a crash mid-restore rolls back to
  the old one. The API notices through `PRAGMA data_version` and rebuilds its in-memory index.
  Renaming a file over the live database instead would leave the API reading the old inode
  and pair the new file with the old `-wal`/`-shm` files: silent data loss or corruption.

PostgreSQL (`GALLERY_URL`) is backed up with `pg_dump` / `pg_restore`: see docs/backup.md.
Exit status: 0 done, 1 refused or failed (one line on stderr), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gallery.sqlite_schema import MIGRATIONS, migrate, new_epoch
from settings import Settings

# gallery.py names no version constant: its user_version after migrating is the number of migrations.
SCHEMA_VERSION = len(MIGRATIONS)
BUSY_TIMEOUT_S = 30.0  # each attempt to lock the live database waits up to this (the API's own setting)
LOCK_DEADLINE_S = 120.0  # give up when the live database stays locked this long (a stuck writer)
INTEGRITY_ERRORS_SHOWN = 3  # integrity_check lines quoted in the one-line failure message
DEFAULT_BACKUP_DIR = Path("backups")
BACKUP_FILE_MODE = 0o600  # face embeddings are biometric personal data: backups are readable by their owner only


class BackupError(Exception):
    """A refusal or failure, explained in one line."""


@dataclass(frozen=True)
class Summary:
    schema_version: int
    identities: int
    faces: int

    def __str__(self) -> str:
        return f"schema version {self.schema_version}, {self.identities} identities, {self.faces} faces"


# --------------------------------------------------------------------------- checks
def _schema(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """(type, name, SQL with whitespace collapsed) of every table and index the user created."""
    rows = db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY name"
    ).fetchall()
    return [(kind, name, " ".join(sql.split())) for kind, name, sql in rows]


def expected_schema(version: int = SCHEMA_VERSION) -> list[tuple[str, str, str]]:
    """The schema gallery.sqlite's first `version` migrations create, read from a scratch in-memory database."""
    scratch = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS[:version]:
            scratch.executescript(script)
        return _schema(scratch)
    finally:
        scratch.close()


def inspect(db: sqlite3.Connection, label: str, oldest: int = SCHEMA_VERSION) -> Summary:
    """Raise BackupError unless `db` is an intact gallery with the schema of a version from `oldest`
    to the one this gallery.py uses."""
    try:
        problems = [row[0] for row in db.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise BackupError(f"{label} fails the integrity check: " + "; ".join(problems[:INTEGRITY_ERRORS_SHOWN]))
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if not oldest <= version <= SCHEMA_VERSION:
            raise BackupError(f"{label} has gallery schema version {version}; this gallery.py uses {SCHEMA_VERSION}")
        if _schema(db) != expected_schema(version):
            raise BackupError(f"{label} is not a gallery: its tables differ from gallery.sqlite's schema {version}")
        if db.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise BackupError(f"{label} has face samples of identities that do not exist")
        identities = db.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
        faces = db.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
    except sqlite3.DatabaseError as error:  # "file is not a database", "malformed", ...
        raise BackupError(f"{label} is not a readable SQLite gallery: {error}") from None
    return Summary(version, identities, faces)


# --------------------------------------------------------------------------- plumbing
def _connect_existing(path: Path, mode: str) -> sqlite3.Connection:
    """Open a database that must already exist (mode "ro" or "rw"): never create an empty one by mistake."""
    if not path.is_file():
        raise BackupError(f"{path} does not exist")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S)


def _copy(source: sqlite3.Connection, target: sqlite3.Connection, what: str) -> None:
    """Copy every page in one backup step, i.e. one read snapshot of `source`, one write transaction of `target`.

    Stepping page by page would let other connections' commits restart the copy; a single step
    holds the snapshot instead. Python retries forever while a database is locked: the progress
    callback turns that into an error after LOCK_DEADLINE_S.
    """
    deadline = time.monotonic() + LOCK_DEADLINE_S

    def give_up_when_stuck(status: int, remaining: int, total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > deadline:
            raise BackupError(f"{what}: the database stayed locked for {LOCK_DEADLINE_S:.0f} s")

    try:
        source.backup(target, pages=-1, progress=give_up_when_stuck)
    except sqlite3.DatabaseError as error:
        # "file is not a database", or a WAL target whose page size differs from the source's
        # (SQLite cannot change the page size of a WAL database)
        raise BackupError(f"{what} failed: {error}") from None


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_sibling(path: Path) -> Path:
    """An empty file in `path`'s folder: same file system, so the rename is atomic and space is checked early."""
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    return Path(name)


def _remove(path: Path) -> None:
    for leftover in (path, Path(f"{path}-journal"), Path(f"{path}-wal"), Path(f"{path}-shm")):
        leftover.unlink(missing_ok=True)


# --------------------------------------------------------------------------- commands
def backup(db: Path, destination: Path) -> Summary:
    """Write a verified, self-contained snapshot of the gallery at `db` to `destination` (which must not exist)."""
    if destination.exists():
        raise BackupError(f"{destination} already exists; a backup never overwrites a file")
    source = _connect_existing(db, "rw")  # rw: a WAL database's -shm may have to be created to read it
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_sibling(destination)
    try:
        os.chmod(staging, BACKUP_FILE_MODE)  # mkstemp's default too, but this is a promise, not an accident
        copy = sqlite3.connect(staging)
        try:
            _copy(source, copy, f"backup of {db}")
            # The copy inherits the WAL flag: switch it to a rollback journal so the backup is one
            # file that can be copied, archived or opened read-only without -wal/-shm companions.
            copy.execute("PRAGMA journal_mode=DELETE")
            summary = inspect(copy, f"the backup of {db}")
        finally:
            copy.close()
        _fsync(staging)
        os.replace(staging, destination)  # atomic: `destination` is absent or complete, never partial
        _fsync(destination.parent)  # the new directory entry is durable too
        return summary
    finally:
        source.close()
        _remove(staging)


def verify(path: Path) -> Summary:
    """Check a backup (or any gallery file) without changing it."""
    db = _connect_existing(path, "ro")
    try:
        return inspect(db, str(path), oldest=1)  # restore migrates an older schema
    finally:
        db.close()


def restore(source_path: Path, db: Path) -> Summary:
    """Replace the gallery at `db` (created if absent) with the verified content of `source_path`.

    The target may be open in a running API: see the module docstring for why this is safe.
    On any refusal the target is left untouched.
    """
    if db.exists() and source_path.exists() and db.resolve() == source_path.resolve():
        raise BackupError(f"{source_path} is the gallery itself")
    source = _connect_existing(source_path, "ro")
    db.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_sibling(db)
    try:
        copy = sqlite3.connect(staging)
        try:
            _copy(source, copy, f"reading {source_path}")
            inspect(copy, str(source_path), oldest=1)  # a backup of an older schema is migrated first
            copy.isolation_level = None
            migrate(copy)
            new_epoch(copy)  # a new lineage: a search index of the gallery before cannot catch up with it
            inspect(copy, str(source_path))  # the staged bytes are what gets restored
            fresh = not db.exists() or db.stat().st_size == 0
            target = sqlite3.connect(db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                target.execute("PRAGMA synchronous=FULL")  # the restore's commit survives power loss
                _copy(copy, target, f"restore into {db}")
                if fresh:  # an existing gallery keeps its WAL mode; a new file gets the gallery's settings
                    target.execute("PRAGMA journal_mode=WAL")
                return inspect(target, f"{db} after the restore")
            finally:
                target.close()
        finally:
            copy.close()
    finally:
        source.close()
        _remove(staging)


# --------------------------------------------------------------------------- CLI
def default_backup_path() -> Path:
    return DEFAULT_BACKUP_DIR / f"gallery-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.db"


def configured_db() -> Path:
    """GALLERY_DB from the environment / .env, like the API; refused when the gallery is PostgreSQL."""
    settings = Settings()
    if settings.gallery_url:
        raise BackupError("GALLERY_URL is set: the gallery is in PostgreSQL; back it up with pg_dump (docs/backup.md)")
    return settings.gallery_db


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("backup", help="write a verified snapshot of the live gallery")
    make.add_argument("--db", type=Path, help="the gallery (default: GALLERY_DB)")
    make.add_argument("--to", type=Path, help="the new backup file (default: backups/gallery-<UTC time>.db)")
    check = commands.add_parser("verify", help="check a backup file: integrity, schema, counts")
    check.add_argument("file", type=Path)
    back = commands.add_parser("restore", help="replace the gallery with a verified backup (API may be running)")
    back.add_argument("--from", dest="source", type=Path, required=True, help="the backup file")
    back.add_argument("--db", type=Path, help="the gallery to replace (default: GALLERY_DB)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "backup":
            db, destination = args.db or configured_db(), args.to or default_backup_path()
            print(f"backed up {db} to {destination}: {backup(db, destination)}")
        elif args.command == "verify":
            print(f"{args.file}: ok, {verify(args.file)}")
        else:
            db = args.db or configured_db()
            print(f"restored {args.source} into {db}: {restore(args.source, db)}")
    except (BackupError, sqlite3.Error, OSError) as error:
        print(f"gallery_backup {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

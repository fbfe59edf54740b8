"""Backup, verify and restore of the SQLite gallery: consistent while the gallery is written,
seen at once by an open gallery, refusing damaged or foreign files, and through the running API."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ROOT, ApiProcess, photo
from gallery.backup import BACKUP_FILE_MODE, SCHEMA_VERSION, BackupError, backup, restore, verify
from gallery.sqlite import SqliteGallery
from gallery.sqlite_schema import MIGRATIONS
from gallery.store import EMBEDDING_DIM, IdentityNotFound, ModelFingerprint, Sample, as_vectors

FACES_PER_PERSON = 3
PAGE_SIZE = 4096  # SQLite's default: the first page holds the header and the schema
ENROLLED_BEFORE_BACKUP = 40  # the writer thread has enrolled at least this many people when the backup starts


def unit(seed: int, count: int = FACES_PER_PERSON) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill(path: Path, names: list[str], first_seed: int = 0) -> dict[str, np.ndarray]:
    """A closed gallery at `path` holding `names`, person i with unit(first_seed + i) samples."""
    gallery = SqliteGallery(path)
    samples = {}
    for i, name in enumerate(names):
        samples[name] = unit(first_seed + i)
        gallery.create(name, {"n": i}, samples[name])
    gallery.close()
    return samples


def stored(path: Path) -> dict[str, list[bytes]]:
    """name -> embedding blobs, in insertion order, read straight from the file."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT i.name, f.embedding FROM identities i LEFT JOIN faces f ON f.identity_id = i.id ORDER BY f.id"
        ).fetchall()
    finally:
        db.close()
    people: dict[str, list[bytes]] = {}
    for name, blob in rows:
        people.setdefault(name, []).append(blob)
    return people


def snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of a database and its WAL companions, to prove a refused restore wrote nothing."""
    return {p.name: p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()}


# --------------------------------------------------------------------------- backup
def test_backup_during_enrollments_is_intact_and_holds_whole_people_in_order(tmp_path: Path) -> None:
    gallery = SqliteGallery(tmp_path / "g.db")
    names = [f"person-{i:04d}" for i in range(2000)]
    enrolled = threading.Semaphore(0)
    stop = threading.Event()

    def writer() -> None:
        for i, name in enumerate(names):
            if stop.is_set():
                return
            gallery.create(name, {}, unit(i))
            enrolled.release()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(ENROLLED_BEFORE_BACKUP):
            assert enrolled.acquire(timeout=60), "the writer did not get going"
        summary = backup(tmp_path / "g.db", tmp_path / "backups" / "b.db")
    finally:
        stop.set()
        thread.join()
        gallery.close()

    assert verify(tmp_path / "backups" / "b.db") == summary
    people = stored(tmp_path / "backups" / "b.db")
    count = len(people)
    assert count >= ENROLLED_BEFORE_BACKUP and summary.identities == count
    assert summary.faces == count * FACES_PER_PERSON
    # A consistent snapshot: exactly the first `count` enrollments, each with all its samples.
    assert sorted(people) == names[:count]
    for i, name in enumerate(names[:count]):
        assert people[name] == [vector.tobytes() for vector in as_vectors(unit(i))]  # as gallery.py stores them
    assert [p.name for p in (tmp_path / "backups").iterdir()] == ["b.db"]  # no temp file, no -wal left behind
    assert stat.S_IMODE((tmp_path / "backups" / "b.db").stat().st_mode) == BACKUP_FILE_MODE  # biometric data


def test_backup_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    fill(tmp_path / "g.db", ["Ada"])
    (tmp_path / "b.db").write_bytes(b"an older backup")
    with pytest.raises(BackupError, match="already exists"):
        backup(tmp_path / "g.db", tmp_path / "b.db")
    assert (tmp_path / "b.db").read_bytes() == b"an older backup"


def test_backup_of_a_missing_gallery_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup(tmp_path / "absent.db", tmp_path / "b.db")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- restore
def test_restore_into_a_new_path_creates_a_working_gallery(tmp_path: Path) -> None:
    samples = fill(tmp_path / "g.db", ["Ada", "Bob"])
    backup(tmp_path / "g.db", tmp_path / "b.db")
    summary = restore(tmp_path / "b.db", tmp_path / "new" / "gallery.db")
    assert (summary.identities, summary.faces) == (2, 2 * FACES_PER_PERSON)
    gallery = SqliteGallery(tmp_path / "new" / "gallery.db")
    try:
        assert sorted(p.name for p in gallery.list(10, 0)[1]) == ["Ada", "Bob"]
        assert gallery.search(samples["Bob"][:1], 1)[0][0].name == "Bob"
        assert gallery._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        gallery.close()


def test_a_backup_keeps_every_sample_s_measurements_crop_and_the_gallery_s_model(tmp_path: Path) -> None:
    gallery = SqliteGallery(tmp_path / "g.db")
    model = ModelFingerprint("w600k_mbf", "a" * 64)
    gallery.claim_model(model)
    ada = gallery.create("Ada", {}, unit(1, 2), [Sample(sharpness=120.5, yaw=-3.0, source="a.jpg", crop=b"jpeg"),
                                                 Sample(source="b.jpg")])
    gallery.close()
    backup(tmp_path / "g.db", tmp_path / "b.db")
    restore(tmp_path / "b.db", tmp_path / "new.db")
    restored = SqliteGallery(tmp_path / "new.db")
    try:
        assert restored.model() == model
        faces = restored.faces(ada.id)
        assert [(f.id, f.source, f.sharpness, f.yaw, f.has_crop) for f in faces] == [
            (ada.face_ids[0], "a.jpg", 120.5, -3.0, True), (ada.face_ids[1], "b.jpg", None, None, False)]
        assert [c.crop for c in restored.pending_crops("b" * 64, 0, 10)] == [b"jpeg"]
    finally:
        restored.close()


def test_a_backup_from_before_per_sample_faces_is_verified_restored_and_migrated(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as db:  # schema 2: no measurements, crops or model yet
        for script in MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version=2")
        db.execute("INSERT INTO gallery_meta (key, value) VALUES ('epoch', 'old')")
        db.execute("INSERT INTO identities VALUES ('ada', 'Ada', '{}', 't', 't')")
        db.execute("INSERT INTO faces (identity_id, embedding, created_at) VALUES ('ada', ?, 't')",
                   (unit(5, 1).tobytes(),))
    db.close()
    assert verify(old).schema_version == 2
    summary = restore(old, tmp_path / "g.db")
    assert (summary.schema_version, summary.identities, summary.faces) == (SCHEMA_VERSION, 1, 1)
    gallery = SqliteGallery(tmp_path / "g.db")
    try:
        [face] = gallery.faces("ada")
        assert (face.source, face.sharpness, face.has_crop, face.model_sha256) == (None, None, False, None)
        assert gallery.model() is None and gallery.search(unit(5, 1), 1)[0][0].id == "ada"
    finally:
        gallery.close()


def test_restore_under_an_open_gallery_replaces_what_it_lists_and_searches(tmp_path: Path) -> None:
    kept = fill(tmp_path / "source.db", ["Ada", "Bob", "Cyd"], first_seed=100)
    backup(tmp_path / "source.db", tmp_path / "b.db")
    live = SqliteGallery(tmp_path / "live.db")
    try:
        xavier = live.create("Xavier", {}, unit(1))
        live.create("Yves", {}, unit(2))
        assert live.search(unit(1)[:1], 1)[0][0].name == "Xavier"  # the in-memory index is built and cached

        restore(tmp_path / "b.db", tmp_path / "live.db")

        # The same instance, not reopened, now lists and searches exactly the restored people.
        total, people = live.list(10, 0)
        assert total == 3 and [p.name for p in people] == ["Ada", "Bob", "Cyd"]
        assert all(p.num_faces == FACES_PER_PERSON for p in people)
        with pytest.raises(IdentityNotFound):
            live.get(xavier.id)
        for name, vectors in kept.items():
            [best, *_] = live.search(vectors[:1], 3)[0]
            assert best.name == name and best.similarity > 0.5
        assert {m.name for m in live.search(unit(1)[:1], 10)[0]} == {"Ada", "Bob", "Cyd"}
        # ...and keeps working on top of them.
        live.create("Dee", {}, unit(3))
        assert live.search(unit(3)[:1], 1)[0][0].name == "Dee"
        assert live.search(kept["Ada"][:1], 1)[0][0].name == "Ada"
    finally:
        live.close()
    assert sorted(stored(tmp_path / "live.db")) == ["Ada", "Bob", "Cyd", "Dee"]


def garbage_header(path: Path) -> None:
    with open(path, "r+b") as file:
        file.write(np.random.default_rng(1).bytes(100))


def garbage_pages(path: Path) -> None:
    """Keep the header and schema page, scramble every table and index page."""
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(PAGE_SIZE)
        file.write(np.random.default_rng(2).bytes(size - PAGE_SIZE))


def newer_schema(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()


def foreign_tables(path: Path) -> None:
    """Another application's SQLite file that happens to carry the same user_version."""
    path.unlink()
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    db.close()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (garbage_header, "not a database"),
        (garbage_pages, "integrity check|malformed"),
        (newer_schema, "schema version"),
        (foreign_tables, "not a gallery"),
    ],
)
def test_restore_refuses_a_bad_file_and_leaves_the_gallery_untouched(
    tmp_path: Path, damage: Callable[[Path], None], reason: str
) -> None:
    fill(tmp_path / "source.db", [f"p{i}" for i in range(30)])
    backup(tmp_path / "source.db", tmp_path / "b.db")
    shutil.copyfile(tmp_path / "b.db", tmp_path / "bad.db")
    damage(tmp_path / "bad.db")
    fill(tmp_path / "live.db", ["Ada", "Bob"])
    live = SqliteGallery(tmp_path / "live.db")  # open, as under a running API
    try:
        before = snapshot(tmp_path / "live.db")
        with pytest.raises(BackupError, match=reason):
            restore(tmp_path / "bad.db", tmp_path / "live.db")
        with pytest.raises(BackupError, match=reason):
            verify(tmp_path / "bad.db")
        assert snapshot(tmp_path / "live.db") == before
        assert sorted(p.name for p in live.list(10, 0)[1]) == ["Ada", "Bob"]  # same created_at: any order
    finally:
        live.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging file left


def test_restore_refuses_the_gallery_as_its_own_source(tmp_path: Path) -> None:
    fill(tmp_path / "g.db", ["Ada"])
    with pytest.raises(BackupError, match="the gallery itself"):
        restore(tmp_path / "g.db", tmp_path / "g.db")
    assert sorted(stored(tmp_path / "g.db")) == ["Ada"]


# --------------------------------------------------------------------------- CLI
def cli(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GALLERY_")}
    return subprocess.run(
        [sys.executable, "-m", "gallery.backup", *args],
        cwd=cwd, env={**clean, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True, timeout=120,
    )


def test_cli_backs_up_verifies_and_restores_with_exit_codes(tmp_path: Path) -> None:
    fill(tmp_path / "g.db", ["Ada", "Bob", "Cyd"])
    made = cli("backup", "--db", str(tmp_path / "g.db"), "--to", str(tmp_path / "b.db"))
    assert made.returncode == 0, made.stderr
    assert "3 identities, 9 faces" in made.stdout
    checked = cli("verify", str(tmp_path / "b.db"))
    assert checked.returncode == 0 and "ok" in checked.stdout and "3 identities" in checked.stdout
    back = cli("restore", "--from", str(tmp_path / "b.db"), "--db", str(tmp_path / "r.db"))
    assert back.returncode == 0, back.stderr
    assert sorted(stored(tmp_path / "r.db")) == ["Ada", "Bob", "Cyd"]

    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    for failed in (
        cli("verify", str(tmp_path / "junk.db")),
        cli("restore", "--from", str(tmp_path / "junk.db"), "--db", str(tmp_path / "r.db")),
        cli("restore", "--from", str(tmp_path / "missing.db"), "--db", str(tmp_path / "r.db")),
        cli("backup", "--db", str(tmp_path / "g.db"), "--to", str(tmp_path / "b.db")),  # exists already
    ):
        assert failed.returncode == 1 and failed.stdout == ""
        assert len(failed.stderr.strip().splitlines()) == 1 and failed.stderr.startswith("gallery_backup ")
    assert sorted(stored(tmp_path / "r.db")) == ["Ada", "Bob", "Cyd"]
    assert cli("restore").returncode == 2  # usage error: --from is required


def test_cli_defaults_to_gallery_db_and_a_timestamped_file_in_backups(tmp_path: Path) -> None:
    fill(tmp_path / "g.db", ["Ada"])
    made = cli("backup", cwd=tmp_path, GALLERY_DB=str(tmp_path / "g.db"))
    assert made.returncode == 0, made.stderr
    [written] = (tmp_path / "backups").iterdir()
    assert written.name.startswith("gallery-") and written.name.endswith("Z.db")
    assert verify(written).identities == 1


def test_cli_refuses_a_postgresql_gallery_and_points_to_pg_dump(tmp_path: Path) -> None:
    refused = cli("backup", cwd=tmp_path, GALLERY_URL="postgresql://db.example/gallery")
    assert refused.returncode == 1 and "pg_dump" in refused.stderr
    assert not (tmp_path / "backups").exists()


# --------------------------------------------------------------------------- through the running API
@pytest.mark.integration
def test_restore_while_the_api_runs_brings_back_a_deleted_person(triton, tmp_path: Path) -> None:
    db = tmp_path / "gallery.db"
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(db)}, tmp_path / "api.log").start()
    yao, hanks = photo("yaoming.jpg").read_bytes(), photo("Tom_Hanks_54745.png").read_bytes()

    def named(client: httpx.Client, image: bytes) -> dict | None:
        response = client.post("/identify", files={"image": ("q.jpg", image)})
        assert response.status_code == 200, response.text
        [face] = response.json()["faces"]
        return face["identity"]

    try:
        with server.client() as client:
            made = client.post("/identities", data={"name": "Yao Ming"}, files=[("images", ("y.jpg", yao))])
            assert made.status_code == 201, made.text
            yao_id = made.json()["id"]
            saved = cli("backup", "--db", str(db), "--to", str(tmp_path / "backups" / "b.db"))
            assert saved.returncode == 0, saved.stderr

            later = client.post("/identities", data={"name": "Tom Hanks"}, files=[("images", ("t.png", hanks))])
            assert later.status_code == 201 and named(client, hanks)["name"] == "Tom Hanks"
            assert client.delete(f"/identities/{yao_id}").status_code == 200
            assert named(client, yao) is None

            back = cli("restore", "--from", str(tmp_path / "backups" / "b.db"), "--db", str(db))
            assert back.returncode == 0, back.stderr

            # The running process sees the backup's gallery: Yao Ming is back, the later enrollment is not.
            restored = named(client, yao)
            assert restored is not None and (restored["id"], restored["name"]) == (yao_id, "Yao Ming")
            assert named(client, hanks) is None
            assert [p["name"] for p in client.get("/identities").json()["identities"]] == ["Yao Ming"]
    finally:
        server.stop()
    assert verify(db).identities == 1

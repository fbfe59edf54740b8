"""Per-sample faces and the model fingerprint in both gallery backends: pure storage, no Triton."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from gallery.sqlite import SqliteGallery
from gallery.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from gallery.store import (
    EMBEDDING_DIM,
    FaceNotFound,
    IdentityNotFound,
    LastFace,
    ModelChangeIncomplete,
    ModelFingerprint,
    Sample,
)

OLD = ModelFingerprint("w600k_mbf", "a" * 64)
NEW = ModelFingerprint("w600k_r50", "b" * 64)


def unit(seed: int, count: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def measured(source: str, crop: bytes | None = b"jpeg bytes") -> Sample:
    return Sample(face_size=81.25, sharpness=140.5, detection_score=0.91, yaw=-3.5, pitch=4.25, roll=1.0,
                  source=source, crop=crop)


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, object]:
    if request.param == "sqlite":
        return "sqlite", tmp_path / "g.db"
    return "postgres", request.getfixturevalue("postgres_url")


@pytest.fixture()
def opener(location):
    kind, where = location
    opened = []

    def open_store():
        if kind == "sqlite":
            store = SqliteGallery(where)
        else:
            from gallery.postgres import PgGallery

            store = PgGallery(where)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture()
def gallery(opener):
    return opener()


def test_samples_keep_their_measurements_and_are_listed_oldest_first(gallery) -> None:
    ada = gallery.create("Ada", {}, unit(1, 2), [measured("ada1.jpg"), measured("ada2.jpg", crop=None)])
    more = gallery.add_faces(ada.id, unit(2), [measured("ada3.jpg")])
    faces = gallery.faces(ada.id)
    assert [f.id for f in faces] == [*ada.face_ids, *more.face_ids]
    assert [f.source for f in faces] == ["ada1.jpg", "ada2.jpg", "ada3.jpg"]
    assert [f.has_crop for f in faces] == [True, False, True]
    first = faces[0]
    assert (first.face_size, first.sharpness, first.detection_score) == (81.25, 140.5, 0.91)
    assert (first.yaw, first.pitch, first.roll) == (-3.5, 4.25, 1.0)
    assert first.identity_id == ada.id and first.created_at == ada.created_at
    with pytest.raises(IdentityNotFound):
        gallery.faces("nobody")


def test_face_ids_follow_the_embeddings_in_every_way_of_storing(gallery) -> None:
    ada = gallery.create("Ada", {}, unit(1, 3))
    assert len(ada.face_ids) == 3 and list(ada.face_ids) == sorted(ada.face_ids)
    more = gallery.add_faces(ada.id, unit(2, 2))
    assert more.num_faces == 5 and min(more.face_ids) > max(ada.face_ids)
    bulk = gallery.create_many([("Bob", {}, unit(3, 2)), ("Cy", {}, unit(4), [measured("cy.jpg")])])
    assert [len(p.face_ids) for p in bulk] == [2, 1]
    assert [f.source for f in gallery.faces(bulk[1].id)] == ["cy.jpg"]
    assert [f.source for f in gallery.faces(bulk[0].id)] == [None, None]  # the bulk path measures nothing
    assert gallery.get(ada.id).face_ids == ()  # only the call that stored them names them
    with pytest.raises(ValueError, match="2 samples for 1 embeddings"):
        gallery.create("Dee", {}, unit(5), [Sample(), Sample()])


def test_removing_a_face_leaves_the_others_and_search_forgets_it(gallery) -> None:
    vectors = unit(1, 2)
    ada = gallery.create("Ada", {}, vectors, [measured("a.jpg"), measured("b.jpg")])
    bob = gallery.create("Bob", {}, unit(2))
    assert gallery.search(vectors[1:], 1)[0][0].similarity == pytest.approx(np.dot(vectors[1], vectors.mean(0))
                                                                            / np.linalg.norm(vectors.mean(0)), abs=1e-4)
    after = gallery.delete_face(ada.id, ada.face_ids[1])
    assert after.num_faces == 1 and [f.id for f in gallery.faces(ada.id)] == [ada.face_ids[0]]
    [best] = gallery.search(vectors[:1], 1)[0]
    assert best.id == ada.id and best.similarity == pytest.approx(1.0, abs=1e-4)  # the centroid is the one left
    assert gallery.face_count() == 2 and gallery.get(bob.id).num_faces == 1


@pytest.mark.parametrize("case", ["last face", "another identity's face", "unknown face", "unknown identity"])
def test_refused_face_removals_change_nothing(gallery, case: str) -> None:
    ada = gallery.create("Ada", {}, unit(1), [measured("a.jpg")])
    bob = gallery.create("Bob", {}, unit(2, 2))
    identity_id, face_id, error = {
        "last face": (ada.id, ada.face_ids[0], LastFace),
        "another identity's face": (ada.id, bob.face_ids[0], FaceNotFound),
        "unknown face": (bob.id, 10**9, FaceNotFound),
        "unknown identity": ("nobody", ada.face_ids[0], IdentityNotFound),
    }[case]
    with pytest.raises(error) as raised:
        gallery.delete_face(identity_id, face_id)
    if error is LastFace:
        assert "delete the identity instead" in raised.value.message
    assert [len(gallery.faces(p.id)) for p in (ada, bob)] == [1, 2] and gallery.face_count() == 3


def test_the_first_fingerprint_claimed_is_recorded_and_stamps_the_samples_before_it(gallery) -> None:
    ada = gallery.create("Ada", {}, unit(1, 2))
    assert gallery.model() is None
    assert gallery.claim_model(OLD) == (OLD, 2)
    assert gallery.claim_model(NEW) == (OLD, None)  # a recorded fingerprint stays: the caller compares
    assert gallery.model() == OLD
    later = gallery.add_faces(ada.id, unit(2))
    assert [f.model_sha256 for f in gallery.faces(ada.id)] == [OLD.sha256] * 3  # new samples: the recorded model
    assert gallery.model_status(OLD.sha256).pending == 0
    explicit = gallery.add_faces(ada.id, unit(3), [Sample(model_sha256=NEW.sha256)])
    assert gallery.faces(ada.id)[-1].model_sha256 == NEW.sha256 and explicit.face_ids != later.face_ids


def test_re_embedding_moves_every_sample_and_only_then_records_the_new_model(gallery) -> None:
    gallery.claim_model(OLD)
    old_vectors, new_vectors = unit(1, 3), unit(2, 3)
    ada = gallery.create("Ada", {}, old_vectors[:2], [measured("a.jpg"), measured("b.jpg")])
    bob = gallery.create("Bob", {}, old_vectors[2:], [measured("c.jpg", crop=None)])
    status = gallery.model_status(NEW.sha256)
    assert (status.total, status.pending, status.pending_without_crop, status.people_without_crop) == (3, 3, 1, 1)
    first = gallery.pending_crops(NEW.sha256, 0, 1)
    assert [(c.face_id, c.identity_id, c.crop) for c in first] == [(ada.face_ids[0], ada.id, b"jpeg bytes")]
    assert gallery.replace_embeddings([(first[0].face_id, new_vectors[0])], NEW.sha256) == 1
    rest = gallery.pending_crops(NEW.sha256, 0, 10)  # a re-run starts over and finds only what is left
    assert [c.face_id for c in rest] == [ada.face_ids[1]]  # Bob's sample has no crop
    assert gallery.replace_embeddings([(ada.face_ids[1], new_vectors[1]), (10**9, new_vectors[2])], NEW.sha256) == 1
    with pytest.raises(ModelChangeIncomplete) as incomplete:
        gallery.finish_model_change(NEW)
    assert incomplete.value.remaining == 1 and gallery.model() == OLD
    gallery.delete(bob.id)
    gallery.finish_model_change(NEW)
    assert gallery.model() == NEW and gallery.model_status(NEW.sha256).pending == 0
    [best] = gallery.search(new_vectors[:1], 1)[0]  # the search index caught up with the new vectors
    centroid = new_vectors[:2].mean(0)
    assert best.id == ada.id and best.similarity == pytest.approx(
        float(new_vectors[0] @ centroid / np.linalg.norm(centroid)), abs=1e-4)


def test_deleting_people_deletes_their_crops(gallery, location) -> None:
    ada = gallery.create("Ada", {}, unit(1, 2), [measured("a.jpg"), measured("b.jpg")])
    gallery.create("Bob", {}, unit(2), [measured("c.jpg")])
    gallery.delete_face(ada.id, ada.face_ids[0])
    gallery.delete(ada.id)
    kind, where = location
    if kind == "sqlite":
        with sqlite3.connect(where) as db:
            assert db.execute("SELECT COUNT(*) FROM face_crops").fetchone()[0] == 1
    else:
        import psycopg

        with psycopg.connect(where) as conn:
            assert conn.execute("SELECT COUNT(*) FROM face_crops").fetchone()[0] == 1
    gallery.delete_all()
    assert gallery.model_status("x").total == 0


def test_an_old_sqlite_gallery_is_migrated_with_its_samples_unmeasured(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for script in SQLITE_MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version=2")
        db.execute("INSERT INTO gallery_meta (key, value) VALUES ('epoch', 'e')")
        db.execute("INSERT INTO identities VALUES ('ada', 'Ada', '{}', 't', 't')")
        db.execute("INSERT INTO faces (identity_id, embedding, created_at) VALUES ('ada', ?, 't')",
                   (unit(1).tobytes(),))
    gallery = SqliteGallery(path)
    try:
        [face] = gallery.faces("ada")
        assert (face.source, face.sharpness, face.yaw, face.has_crop) == (None, None, None, False)
        assert face.model_sha256 is None
        assert gallery.model() is None and gallery.search(unit(1), 1)[0][0].id == "ada"
        assert gallery.claim_model(OLD) == (OLD, 1)
    finally:
        gallery.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)


def test_an_old_postgres_gallery_is_migrated_with_its_samples_unmeasured(postgres_url: str) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    from gallery.postgres import PgGallery
    from gallery.postgres_schema import MIGRATIONS

    with psycopg.connect(postgres_url) as conn:  # the schema of version 1, as an older release left it
        for statement in filter(str.strip, MIGRATIONS[0].split(";")):
            conn.execute(statement)
        conn.execute("CREATE TABLE frtriton_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO frtriton_schema (version) VALUES (1)")
        register_vector(conn)
        conn.execute("INSERT INTO identities (id, name, created_at, updated_at) VALUES ('ada', 'Ada', 't', 't')")
        conn.execute("INSERT INTO faces (identity_id, embedding, created_at) VALUES ('ada', %s, 't')", (unit(1)[0],))
    gallery = PgGallery(postgres_url)
    try:
        [face] = gallery.faces("ada")
        assert (face.source, face.sharpness, face.yaw, face.has_crop) == (None, None, None, False)
        assert face.model_sha256 is None
        assert gallery.model() is None
        assert gallery.claim_model(OLD) == (OLD, 1)
    finally:
        gallery.close()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM frtriton_schema").fetchone()[0] == len(MIGRATIONS)

"""The gallery store (SQLite) and its in-memory index: pure storage logic, no Triton."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from gallery.index import FaceIndex
from gallery.sqlite import MIGRATIONS, SqliteGallery
from gallery.store import EMBEDDING_DIM, IdentityNotFound


def unit(seed: int, count: int = 1) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(count, EMBEDDING_DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vector: np.ndarray, seed: int, noise: float = 0.3) -> np.ndarray:
    jitter = np.random.default_rng(seed).normal(size=vector.shape).astype(np.float32) * noise / np.sqrt(EMBEDDING_DIM)
    moved = vector + jitter
    return moved / np.linalg.norm(moved, axis=-1, keepdims=True)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    """Opens galleries of one backend on one store: both backends pass the same tests."""
    if request.param == "sqlite":
        location = tmp_path / "g.db"
        opener = SqliteGallery
    else:
        from gallery.postgres import PgGallery

        location = request.getfixturevalue("postgres_url")
        opener = PgGallery
    opened = []

    def open_store(scoring: str = "centroid"):
        store = opener(location, scoring)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture()
def gallery(backend):
    return backend()


def test_create_get_list_and_count(gallery: SqliteGallery) -> None:
    ada = gallery.create("Ada", {"team": "math"}, unit(1, 2))
    bob = gallery.create("Bob", {}, unit(2))
    assert (ada.name, ada.num_faces, ada.metadata) == ("Ada", 2, {"team": "math"})
    assert gallery.get(bob.id).num_faces == 1
    total, people = gallery.list(limit=1, offset=1)
    assert total == 2 and [p.name for p in people] == ["Bob"]
    assert gallery.face_count() == 3


@pytest.mark.parametrize(("scoring", "expected"), [("best_sample", 0.9), ("centroid", 0.6)])
def test_search_names_the_nearest_person(backend, scoring: str, expected: float) -> None:
    gallery = backend(scoring)
    ada_vectors, bob_vectors = unit(1, 2), unit(2, 2)
    ada = gallery.create("Ada", {}, ada_vectors)
    gallery.create("Bob", {}, bob_vectors)
    [matches] = gallery.search(near(ada_vectors[1], 9)[None], top_k=5)
    assert [m.name for m in matches] == ["Ada", "Bob"]
    # one of two unrelated samples: ~0.96 to itself, ~0.68 to the pair's centroid
    assert matches[0].id == ada.id and matches[0].similarity > expected > 0.2 > abs(matches[1].similarity)


def test_search_of_an_empty_gallery_returns_no_matches(gallery: SqliteGallery) -> None:
    assert gallery.search(unit(1, 3), top_k=5) == [[], [], []]


def test_update_merge_and_delete(gallery: SqliteGallery) -> None:
    a = gallery.create("A", {}, unit(1))
    b = gallery.create("A again", {}, unit(2, 2))
    assert gallery.update(a.id, "Alice", {"k": 1}).name == "Alice"
    merged = gallery.merge(a.id, b.id)
    assert merged.num_faces == 3 and merged.metadata == {"k": 1}
    with pytest.raises(IdentityNotFound):
        gallery.get(b.id)
    [matches] = gallery.search(unit(2)[:1], top_k=5)
    assert [m.name for m in matches] == ["Alice"] and matches[0].similarity > 0.5
    gallery.delete(a.id)
    assert gallery.list(10, 0) == (0, []) and gallery.face_count() == 0
    with pytest.raises(IdentityNotFound):
        gallery.delete(a.id)


@pytest.mark.parametrize("operation", ["get", "update", "add_faces", "delete", "merge_target", "merge_source"])
def test_unknown_ids_raise_identity_not_found(gallery: SqliteGallery, operation: str) -> None:
    known = gallery.create("K", {}, unit(1))
    calls = {
        "get": lambda: gallery.get("nope"),
        "update": lambda: gallery.update("nope", "x", None),
        "add_faces": lambda: gallery.add_faces("nope", unit(2)),
        "delete": lambda: gallery.delete("nope"),
        "merge_target": lambda: gallery.merge("nope", known.id),
        "merge_source": lambda: gallery.merge(known.id, "nope"),
    }
    with pytest.raises(IdentityNotFound):
        calls[operation]()
    assert gallery.get(known.id).num_faces == 1  # nothing changed


def test_delete_all(gallery: SqliteGallery) -> None:
    for i in range(3):
        gallery.create(f"P{i}", {}, unit(i))
    assert gallery.delete_all() == 3
    assert gallery.list(10, 0) == (0, []) and gallery.search(unit(0), 3) == [[]]


def test_the_gallery_survives_a_reopen(backend) -> None:
    store = backend()
    person = store.create("Persisted", {"x": [1, 2]}, unit(5, 3))
    store.close()
    again = backend()
    assert again.get(person.id).num_faces == 3 and again.get(person.id).metadata == {"x": [1, 2]}
    assert again.search(unit(5, 1), 1)[0][0].id == person.id


def test_the_schema_is_versioned_and_in_wal_mode(tmp_path: Path) -> None:
    SqliteGallery(tmp_path / "g.db").close()
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_second_process_sees_writes_of_the_first(backend) -> None:
    first, second = backend(), backend()
    assert second.search(unit(1), 1) == [[]]
    person = first.create("Shared", {}, unit(1))
    assert second.search(unit(1), 1)[0][0].id == person.id  # data_version told it to reload
    first.delete(person.id)
    assert second.search(unit(1), 1) == [[]]


def test_concurrent_writers_lose_nothing(gallery: SqliteGallery) -> None:
    def enroll(worker: int) -> None:
        for i in range(10):
            gallery.create(f"w{worker}-{i}", {}, unit(worker * 100 + i, 2))

    threads = [threading.Thread(target=enroll, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gallery.list(1000, 0)[0] == 40 and gallery.face_count() == 80
    assert len(gallery.search(unit(0), 100)[0]) == 40


def test_an_enrollment_waits_for_a_running_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by benchmarks/load.py: a search read the in-memory index while an enrollment was
    # patching it (IndexError -> 500). Writers must wait until the search is done.
    gallery = SqliteGallery(tmp_path / "g.db")
    gallery.create("Ada", {}, unit(1))
    inside, release = threading.Event(), threading.Event()
    original = FaceIndex.search

    def held_search(self: FaceIndex, *args, **kwargs):
        inside.set()
        release.wait(10)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FaceIndex, "search", held_search)
    results: list = []
    searcher = threading.Thread(target=lambda: results.append(gallery.search(unit(2), 5)))
    writer = threading.Thread(target=gallery.create, args=("Bob", {}, unit(3)))
    try:
        searcher.start()
        assert inside.wait(10)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "the enrollment changed the index while a search was reading it"
    finally:
        release.set()
        searcher.join()
        writer.join()
        gallery.close()
    assert [m.name for m in results[0][0]] == ["Ada"]


def test_search_after_many_changes_equals_a_fresh_reader(backend) -> None:
    gallery = backend()
    a = gallery.create("A", {}, unit(1, 2))
    b = gallery.create("B", {}, unit(2))
    c = gallery.create("C", {}, unit(3, 3))
    gallery.add_faces(b.id, unit(4))
    gallery.merge(a.id, c.id)
    gallery.update(b.id, "Bee", None)
    gallery.delete(a.id)
    gallery.create("D", {}, unit(5))
    queries = unit(42, 6)
    incremental = gallery.search(queries, 5)
    rebuilt = backend().search(queries, 5)
    as_tuples = [[(m.id, m.name, round(m.similarity, 5)) for m in row] for row in incremental]
    assert as_tuples == [[(m.id, m.name, round(m.similarity, 5)) for m in row] for row in rebuilt]


@pytest.mark.parametrize(
    ("owners", "vectors", "query", "expected"),
    [
        ([0, 0, 1], [[1, 0], [0, 1], [0.6, 0.8]], [0, 1], ["a", "b"]),  # a's second sample is exact
        ([0, 1, 1], [[1, 0], [0, 1], [0.6, 0.8]], [1, 0], ["a", "b"]),
        ([1, 1, 0], [[1, 0], [0, 1], [0.6, 0.8]], [0.6, 0.8], ["a", "b"]),  # a = person 0 owns row 2
    ],
)
def test_face_index_scores_people_by_their_best_sample(owners, vectors, query, expected) -> None:
    rows = np.pad(np.asarray(vectors, np.float32), ((0, 0), (0, EMBEDDING_DIM - 2)))
    owners = np.asarray(owners)
    index = FaceIndex.build([(n, n, np.flatnonzero(owners == p), rows[owners == p]) for p, n in enumerate("ab")])
    padded = np.zeros((1, EMBEDDING_DIM), np.float32)
    padded[0, :2] = query
    assert [m.name for m in index.search(padded, 2, "best_sample")[0]] == expected


def test_face_index_centroid_scoring_uses_the_mean_of_the_samples() -> None:
    vectors = np.zeros((3, EMBEDDING_DIM), np.float32)
    vectors[0, 0] = vectors[1, 1] = 1.0  # person a: two orthogonal samples -> centroid (0.707, 0.707)
    vectors[2, :2] = [0.96, -0.28]  # person b: one sample near a's first sample
    index = FaceIndex.build([("a", "a", np.array([0, 1]), vectors[:2]), ("b", "b", np.array([2]), vectors[2:])])
    query = np.zeros((1, EMBEDDING_DIM), np.float32)
    query[0, :2] = [0.6, 0.8]
    centroid = index.search(query, 2, "centroid")[0]
    assert [m.name for m in centroid] == ["a", "b"]
    assert centroid[0].similarity == pytest.approx((0.6 + 0.8) / np.sqrt(2), abs=1e-5)
    assert [m.name for m in index.search(query, 2, "best_sample")[0]] == ["a", "b"]
    index.replace("a", "a", np.zeros(0), np.zeros((0, EMBEDDING_DIM)))
    assert [m.name for m in index.search(query, 2, "centroid")[0]] == ["b"]


@pytest.mark.parametrize("scoring", ["centroid", "best_sample"])
def test_scoring_one_identity_gives_the_similarity_search_gives_them(backend, scoring: str) -> None:
    gallery = backend(scoring)
    ada = gallery.create("Ada", {}, unit(1, 3))
    bob = gallery.create("Bob", {}, unit(2, 2))
    queries = np.stack([near(unit(1, 3)[0], 7), near(unit(2, 2)[1], 8), unit(3)[0]])
    searched = gallery.search(queries, top_k=2)
    for person in (ada, bob):
        scored = gallery.score_identity(person.id, queries)
        assert [(m.id, m.name) for m in scored] == [(person.id, person.name)] * 3
        expected = [next(m.similarity for m in matches if m.id == person.id) for matches in searched]
        np.testing.assert_allclose([m.similarity for m in scored], expected, atol=1e-5)


def test_scoring_one_identity_scores_them_even_outside_the_top_k(backend) -> None:
    gallery = backend()
    ada = gallery.create("Ada", {}, unit(1, 2))
    for seed in range(10, 16):
        gallery.create(f"P{seed}", {}, unit(seed))
    query = near(unit(12)[0], 5)[None]
    [matches] = gallery.search(query, top_k=1)
    assert matches[0].id != ada.id
    [scored] = gallery.score_identity(ada.id, query)
    assert scored.id == ada.id and abs(scored.similarity) < 0.2  # unrelated, but scored


def test_scoring_an_unknown_identity_raises_identity_not_found(gallery) -> None:
    gallery.create("Ada", {}, unit(1))
    with pytest.raises(IdentityNotFound):
        gallery.score_identity("no-such-id", unit(2))

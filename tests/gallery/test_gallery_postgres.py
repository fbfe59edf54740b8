"""PostgreSQL gallery specifics: the bulk path `PgGallery.create_many` (COPY, HNSW rebuild) and migrations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from gallery.store import EMBEDDING_DIM

psycopg = pytest.importorskip("psycopg")
postgres = pytest.importorskip("gallery.postgres")
PgGallery = postgres.PgGallery


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def people_with_centres(
    count: int, per_person: int, seed: int
) -> tuple[np.ndarray, list[tuple[str, dict, np.ndarray]]]:
    """Random unit centres, and per person `per_person` samples at cosine ~0.7 around its centre."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((count, EMBEDDING_DIM)))
    noise = unit_rows(rng.standard_normal((count, per_person, EMBEDDING_DIM)))
    samples = unit_rows(0.7 * centres[:, None, :] + 0.7 * noise)
    return centres, [(f"person {i}", {"n": i}, samples[i]) for i in range(count)]


def numpy_centroid(embeddings: np.ndarray) -> np.ndarray:
    return unit_rows(unit_rows(embeddings.astype(np.float64)).mean(axis=0))


def stored_centroids(url: str) -> dict[str, np.ndarray]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, centroid::real[] FROM identities").fetchall()
    return {identity_id: np.asarray(values, np.float32) for identity_id, values in rows}


def hnsw_indexes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'").fetchall()
    return dict(rows)


@pytest.fixture()
def other_postgres_url(postgres_server: str) -> str:
    """A second fresh database on the same server (for comparing two galleries)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture()
def gallery(postgres_url: str) -> Iterator[PgGallery]:
    store = PgGallery(postgres_url)
    yield store
    store.close()


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuilding the indexes", "into the indexes"])
def test_create_many_stores_every_person_with_faces_and_normalised_centroid(
    gallery: PgGallery, postgres_url: str, rebuild: bool
) -> None:
    gallery.create("Before", {}, unit_rows(np.ones((1, EMBEDDING_DIM))))
    centres, people = people_with_centres(40, 3, seed=1)
    people[5] = ("One sample", {"tags": ["a", "b"]}, people[5][2][:1])
    made = gallery.create_many(people, rebuild_indexes=rebuild)

    assert [(p.name, p.metadata, p.num_faces) for p in made] == [(n, m, len(e)) for n, m, e in people]
    assert [gallery.get(p.id) for p in made] == made
    total, listed = gallery.list(100, 0)
    assert total == 41 and [p.id for p in listed[1:]] == [p.id for p in made]  # in the order given
    assert gallery.face_count() == 1 + sum(len(e) for _, _, e in people)
    centroids = stored_centroids(postgres_url)
    for person, (_, _, embeddings) in zip(made, people, strict=True):
        np.testing.assert_allclose(centroids[person.id], numpy_centroid(embeddings), atol=1e-6)
    for person, centre in zip(made, centres, strict=True):
        assert gallery.search(centre[None], 1)[0][0].id == person.id
    assert set(hnsw_indexes(postgres_url)) == {"faces_hnsw"}


@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuilding the indexes", "into the indexes"])
def test_create_many_with_a_bad_vector_in_the_middle_stores_nothing(
    gallery: PgGallery, postgres_url: str, rebuild: bool
) -> None:
    kept = gallery.create("Kept", {}, unit_rows(np.ones((2, EMBEDDING_DIM))))
    _, people = people_with_centres(20, 2, seed=2)
    people[10] = ("Broken", {}, np.ones((2, 100), np.float32))  # 200 numbers: not 512-dimensional vectors
    with pytest.raises(ValueError):
        gallery.create_many(people, rebuild_indexes=rebuild)

    assert gallery.list(100, 0) == (1, [kept]) and gallery.face_count() == 2
    assert set(hnsw_indexes(postgres_url)) == {"faces_hnsw"}  # the DROP INDEX rolled back too
    assert gallery.search(unit_rows(np.ones((1, EMBEDDING_DIM))), 5)[0][0].id == kept.id


def test_create_many_that_rebuilds_leaves_the_hnsw_index_in_place_and_used(
    gallery: PgGallery, postgres_url: str
) -> None:
    before = hnsw_indexes(postgres_url)
    _, people = people_with_centres(300, 4, seed=3)
    gallery.create_many(people, rebuild_indexes=True)

    assert gallery.last_bulk_load["rebuilt_indexes"] is True
    assert hnsw_indexes(postgres_url) == before and "halfvec_cosine_ops" in before["faces_hnsw"]  # as it was
    with psycopg.connect(postgres_url) as conn:
        invalid = conn.execute("SELECT COUNT(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0]
        probe = "[" + ",".join(map(str, people[0][2][0])) + "]"
        conn.execute("SET enable_seqscan = off")  # a tiny table: ask whether the index *can* serve the query
        plan = conn.execute(
            "EXPLAIN SELECT id FROM faces ORDER BY embedding::halfvec(512) <=> %s::vector::halfvec(512) LIMIT 5",
            (probe,),
        ).fetchall()
    assert invalid == 0 and "faces_hnsw" in " ".join(row[0] for row in plan)


def test_centroid_bits_are_the_binary_quantisation_the_search_computes(gallery: PgGallery, postgres_url: str) -> None:
    _, people = people_with_centres(5, 3, seed=10)
    made = gallery.create_many(people[:3]) + [gallery.create(*person) for person in people[3:]]
    with psycopg.connect(postgres_url) as conn:
        stored = dict(conn.execute("SELECT id, centroid_bits::text FROM identities").fetchall())
    for person, (_, _, embeddings) in zip(made, people, strict=True):
        assert stored[person.id] == postgres._bits(numpy_centroid(embeddings))
    gallery.add_faces(made[0].id, people[4][2])  # a new centroid: its bits follow
    with psycopg.connect(postgres_url) as conn:
        bits = conn.execute("SELECT centroid_bits::text FROM identities WHERE id = %s", (made[0].id,)).fetchone()[0]
    assert bits == postgres._bits(numpy_centroid(np.vstack([people[0][2], people[4][2]])))


def test_a_rebuild_whose_parallel_build_is_refused_builds_serially(gallery: PgGallery, postgres_url: str) -> None:
    # A container's /dev/shm is 64 MB unless raised, and a parallel HNSW build takes all of its
    # maintenance_work_mem there at once: the server refuses it. Here a trigger refuses it the same way.
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_parallel() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF current_setting('max_parallel_maintenance_workers') <> '0' THEN"
            "  RAISE EXCEPTION 'could not resize shared memory segment' USING ERRCODE = 'disk_full';"
            " END IF; END $$"
        )
        conn.execute(
            "CREATE EVENT TRIGGER refuse_parallel ON ddl_command_start WHEN TAG IN ('CREATE INDEX')"
            " EXECUTE FUNCTION refuse_parallel()"
        )
    before = hnsw_indexes(postgres_url)
    centres, people = people_with_centres(50, 2, seed=11)
    made = gallery.create_many(people, rebuild_indexes=True)

    assert hnsw_indexes(postgres_url) == before and gallery.face_count() == 100
    assert [row[0].id for row in gallery.search(centres, 1)] == [person.id for person in made]


def test_create_many_chooses_a_rebuild_only_for_loads_large_next_to_the_gallery(
    gallery: PgGallery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "BULK_REBUILD_MIN_FACES", 10)
    monkeypatch.setattr(postgres, "BULK_REBUILD_RATIO", 0.5)
    _, people = people_with_centres(60, 2, seed=4)
    gallery.create_many(people[:2])  # 4 faces: fewer than the minimum
    assert gallery.last_bulk_load["rebuilt_indexes"] is False
    gallery.create_many(people[2:40])  # 76 faces next to 4
    assert gallery.last_bulk_load["rebuilt_indexes"] is True
    gallery.create_many(people[40:55])  # 30 faces next to 80: below half
    assert gallery.last_bulk_load["rebuilt_indexes"] is False
    assert gallery.face_count() == 110


@pytest.mark.parametrize("scoring", ["centroid", "best_sample"])
@pytest.mark.parametrize("rebuild", [True, False], ids=["rebuilding the indexes", "into the indexes"])
def test_search_after_create_many_equals_search_after_create(
    postgres_url: str, other_postgres_url: str, scoring: str, rebuild: bool
) -> None:
    centres, people = people_with_centres(80, 3, seed=5)
    one_by_one, bulk = PgGallery(postgres_url, scoring), PgGallery(other_postgres_url, scoring)
    try:
        for name, metadata, embeddings in people:
            one_by_one.create(name, metadata, embeddings)
        bulk.create_many(people, rebuild_indexes=rebuild)
        probes = unit_rows(0.7 * centres + 0.7 * unit_rows(np.random.default_rng(6).standard_normal(centres.shape)))
        singles, many = one_by_one.search(probes, 3), bulk.search(probes, 3)
    finally:
        one_by_one.close()
        bulk.close()
    assert [row[0].name for row in many] == [row[0].name for row in singles] == [name for name, _, _ in people]
    for a, b in zip(singles, many, strict=True):
        assert b[0].similarity == pytest.approx(a[0].similarity, abs=1e-5)


def test_people_from_create_many_take_more_faces_merge_and_delete_like_any(
    gallery: PgGallery, postgres_url: str
) -> None:
    _, people = people_with_centres(3, 2, seed=7)
    a, b, c = gallery.create_many(people)
    extra = unit_rows(np.random.default_rng(8).standard_normal((1, EMBEDDING_DIM)))
    assert gallery.add_faces(a.id, extra).num_faces == 3
    np.testing.assert_allclose(
        stored_centroids(postgres_url)[a.id], numpy_centroid(np.vstack([people[0][2], extra])), atol=1e-6
    )
    assert gallery.merge(a.id, b.id).num_faces == 5
    gallery.delete(c.id)
    assert gallery.list(10, 0)[0] == 1 and gallery.face_count() == 5


def test_a_database_of_schema_1_migrates_keeping_every_person_and_face(postgres_url: str) -> None:
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    from gallery.postgres_schema import MIGRATIONS
    from gallery.store import Identity

    centres, people = people_with_centres(30, 2, seed=9)
    made = []
    with psycopg.connect(postgres_url) as conn:  # the schema of version 1 and its rows, as an older release left them
        for statement in filter(str.strip, MIGRATIONS[0].split(";")):
            conn.execute(statement)
        conn.execute("CREATE TABLE frtriton_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO frtriton_schema (version) VALUES (1)")
        register_vector(conn)
        for number, (name, metadata, embeddings) in enumerate(people):
            identity_id, stamp = f"id{number:03d}", f"2026-01-01T00:00:{number:02d}+00:00"
            conn.execute(
                "INSERT INTO identities (id, name, metadata, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)",
                (identity_id, name, Jsonb(metadata), stamp, stamp),
            )
            for vector in embeddings:
                conn.execute(
                    "INSERT INTO faces (identity_id, embedding, created_at) VALUES (%s, %s, %s)",
                    (identity_id, vector, stamp),
                )
            conn.execute(
                "UPDATE identities SET centroid = (SELECT l2_normalize(AVG(embedding)) FROM faces"
                " WHERE identity_id = %s) WHERE id = %s",
                (identity_id, identity_id),
            )
            made.append(Identity(identity_id, name, metadata, len(embeddings), stamp))
    assert "halfvec" not in hnsw_indexes(postgres_url)["faces_hnsw"]

    store, by_centroid = PgGallery(postgres_url, "best_sample"), PgGallery(postgres_url)
    try:
        indexes = hnsw_indexes(postgres_url)
        assert list(indexes) == ["faces_hnsw"] and "halfvec_cosine_ops" in indexes["faces_hnsw"]
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT version FROM frtriton_schema").fetchone()[0] == len(MIGRATIONS)
            assert conn.execute("SELECT COUNT(*) FROM identities WHERE centroid_bits IS NULL").fetchone()[0] == 0
        assert store.list(100, 0) == (30, made) and store.face_count() == 60
        for scorer in (store, by_centroid):
            assert [row[0].id for row in scorer.search(centres, 1)] == [person.id for person in made]
    finally:
        store.close()
        by_centroid.close()


def test_create_many_of_nobody_is_a_no_op(gallery: PgGallery) -> None:
    assert gallery.create_many([]) == []
    assert gallery.list(10, 0) == (0, [])

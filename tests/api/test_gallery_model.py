"""Integration: the gallery knows its model. A gallery recorded under another recognizer refuses to start;
`python -m usecases.reembed` (or GALLERY_ALLOW_MODEL_CHANGE=reembed at start-up) moves it to the served
one from the stored crops; a gallery from before fingerprints records the served one. Real Triton, real
LFW photos, both backends.

"Another model" is made real and cheap: the gallery's recorded fingerprint and every sample's model are
set to another sha256, and for the re-embedding tests every stored embedding is replaced by a random
vector, so only embeddings made again from the stored crops can name anyone afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_gallery_routes import enroll, people, store_env, subject  # noqa: F401  (helpers, fixture)

from conftest import ROOT, ApiProcess
from gallery.sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from gallery.store import EMBEDDING_DIM

pytestmark = pytest.mark.integration

OTHER_NETWORK, OTHER_SHA256 = "glint360k_r100", "f" * 64


def served_model(triton) -> tuple[str, str]:
    """(network, sha256) of the recognizer Triton serves, from its config (what GET /models shows)."""
    parameters = httpx.get(f"http://{triton.url}/v2/models/fr_model/config", timeout=30).json()["parameters"]
    return parameters["fr_name"]["string_value"], parameters["fr_sha256"]["string_value"]


def run_sql(env: dict[str, str], statement: str, parameters: tuple = ()) -> list[tuple]:
    """One statement on the gallery's database (`?` placeholders on both backends), committed."""
    if "GALLERY_URL" in env:
        import psycopg
        from pgvector.psycopg import register_vector

        with psycopg.connect(env["GALLERY_URL"]) as conn:
            if conn.execute("SELECT 1 FROM pg_type WHERE typname = 'vector'").fetchone():  # not before the schema
                register_vector(conn)
            cursor = conn.execute(statement.replace("?", "%s"), parameters)
            return cursor.fetchall() if cursor.description else []
    with sqlite3.connect(env["GALLERY_DB"]) as db:
        return db.execute(statement, parameters).fetchall()


def recorded_model(env: dict[str, str]) -> tuple[str, str] | None:
    meta = dict(run_sql(env, "SELECT key, value FROM gallery_meta WHERE key IN ('model_network', 'model_sha256')"))
    return (meta["model_network"], meta["model_sha256"]) if meta else None


def pretend_another_model_made_it(env: dict[str, str], scramble: bool) -> None:
    """Record another recognizer as the gallery's and its samples'; with `scramble`, random embeddings too."""
    run_sql(env, "UPDATE gallery_meta SET value = ? WHERE key = 'model_network'", (OTHER_NETWORK,))
    run_sql(env, "UPDATE gallery_meta SET value = ? WHERE key = 'model_sha256'", (OTHER_SHA256,))
    run_sql(env, "UPDATE faces SET model_sha256 = ?", (OTHER_SHA256,))
    if not scramble:
        return
    rng = np.random.default_rng(7)
    for (face_id,) in run_sql(env, "SELECT id FROM faces"):
        vector = rng.normal(size=EMBEDDING_DIM).astype(np.float32)
        vector /= np.linalg.norm(vector)
        stored = vector if "GALLERY_URL" in env else vector.tobytes()
        run_sql(env, "UPDATE faces SET embedding = ? WHERE id = ?", (stored, face_id))
    if "GALLERY_URL" in env:
        run_sql(env, "UPDATE identities i SET centroid = (SELECT l2_normalize(AVG(embedding)) FROM faces f"
                     " WHERE f.identity_id = i.id)")


def enrolled_gallery(triton, tmp_path: Path, env: dict[str, str], lfw_dir: Path, **extra: str) -> dict[str, Path]:
    """Three LFW people enrolled from two photos each by an API that is stopped again: {id: their third photo}."""
    server = ApiProcess({"TRITON_URL": triton.url, **env, **extra}, tmp_path / "enroll.log").start()
    try:
        with server.client() as client:
            made = {}
            for person in people(lfw_dir, 3, 3):
                answer = enroll(client, person[0].parent.name, person[:2])
                assert answer.status_code == 201, answer.text
                made[answer.json()["id"]] = person[2]
            return made
    finally:
        server.stop()


def identified(server: ApiProcess, photos: dict[str, Path]) -> dict[str, str | None]:
    """{enrolled id: the id /identify names for their other photo (None: unknown)}."""
    with server.client() as client:
        out = {}
        for identity_id, path in photos.items():
            face = subject(client.post("/identify", files={"image": (path.name, path.read_bytes())}).json())
            out[identity_id] = face["identity"]["id"] if face["identity"] else None
        return out


def reembed_cli(triton, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "usecases.reembed", "--triton-url", triton.url, *args],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )


def failed_start(server: ApiProcess) -> str:
    """Start `server`, which must refuse to start; what it logged."""
    with pytest.raises(RuntimeError, match="failed to start"):
        server.start()
    return server.log_path.read_text()


def test_a_gallery_made_by_another_model_refuses_to_start_and_says_what_to_do(
    triton, tmp_path: Path, store_env, lfw_dir: Path  # noqa: F811 (the fixture imported above)
) -> None:
    env = {"TRITON_URL": triton.url, **store_env}
    enrolled_gallery(triton, tmp_path, store_env, lfw_dir)
    network, sha256 = served_model(triton)
    assert recorded_model(store_env) == (network, sha256)  # the first start recorded the served model
    pretend_another_model_made_it(store_env, scramble=False)
    log = failed_start(ApiProcess(env, tmp_path / "refused.log"))
    assert f"embedded by {OTHER_NETWORK} (sha256 {OTHER_SHA256[:16]}" in log  # which model made the gallery
    assert f"Triton serves {network} (sha256 {sha256[:16]}" in log  # which one is served
    assert "GALLERY_ALLOW_MODEL_CHANGE=reembed" in log and "python -m usecases.reembed" in log  # what to do
    assert recorded_model(store_env) == (OTHER_NETWORK, OTHER_SHA256)  # nothing changed


def test_reembedding_moves_the_gallery_to_the_served_model_and_its_people_are_named_again(
    triton, tmp_path: Path, store_env, lfw_dir: Path  # noqa: F811
) -> None:
    photos = enrolled_gallery(triton, tmp_path, store_env, lfw_dir)
    pretend_another_model_made_it(store_env, scramble=True)
    done = reembed_cli(triton, store_env)
    assert done.returncode == 0, done.stderr
    assert "re-embedding 6 of 6 face samples" in done.stdout and "done: 6 face samples re-embedded" in done.stdout
    assert recorded_model(store_env) == served_model(triton)
    again = reembed_cli(triton, store_env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    server = ApiProcess({"TRITON_URL": triton.url, **store_env}, tmp_path / "after.log").start()
    try:
        assert identified(server, photos) == {identity_id: identity_id for identity_id in photos}
    finally:
        server.stop()


def test_allow_model_change_reembed_re_embeds_the_gallery_at_start_up(
    triton, tmp_path: Path, store_env, lfw_dir: Path  # noqa: F811
) -> None:
    photos = enrolled_gallery(triton, tmp_path, store_env, lfw_dir)
    pretend_another_model_made_it(store_env, scramble=True)
    env = {"TRITON_URL": triton.url, **store_env, "GALLERY_ALLOW_MODEL_CHANGE": "reembed"}
    server = ApiProcess(env, tmp_path / "reembed.log").start()
    try:
        assert identified(server, photos) == {identity_id: identity_id for identity_id in photos}
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "re-embedding 6 of 6 face samples from their stored crops" in log and "re-embedded 6 face samples" in log
    assert recorded_model(store_env) == served_model(triton)


def test_samples_without_a_stored_crop_cannot_be_re_embedded_and_nothing_changes(
    triton, tmp_path: Path, store_env, lfw_dir: Path  # noqa: F811
) -> None:
    enrolled_gallery(triton, tmp_path, store_env, lfw_dir, GALLERY_KEEP_CROPS="false")
    pretend_another_model_made_it(store_env, scramble=False)
    before = run_sql(store_env, "SELECT id, embedding FROM faces ORDER BY id")
    env = {"TRITON_URL": triton.url, **store_env, "GALLERY_ALLOW_MODEL_CHANGE": "reembed"}
    log = failed_start(ApiProcess(env, tmp_path / "refused.log"))
    assert "6 of the gallery's 6 face samples (3 people) have no stored crop" in log
    cli = reembed_cli(triton, store_env)
    assert cli.returncode == 1 and "have no stored crop" in cli.stderr and "nothing was changed" in cli.stderr
    assert recorded_model(store_env) == (OTHER_NETWORK, OTHER_SHA256)
    assert run_sql(store_env, "SELECT id, embedding FROM faces ORDER BY id") == before


def old_gallery(env: dict[str, str], name: str, embedding: np.ndarray) -> None:
    """A gallery as the release before per-sample faces left it (no fingerprint), holding one person."""
    if "GALLERY_URL" in env:
        from gallery.postgres_schema import MIGRATIONS

        for statement in filter(str.strip, MIGRATIONS[0].split(";")):
            run_sql(env, statement)
        run_sql(env, "CREATE TABLE frtriton_schema (version INTEGER NOT NULL)")
        run_sql(env, "INSERT INTO frtriton_schema (version) VALUES (1)")
        run_sql(env, "INSERT INTO identities (id, name, created_at, updated_at) VALUES ('old', ?, 't', 't')", (name,))
        run_sql(env, "INSERT INTO faces (identity_id, embedding, created_at) VALUES ('old', ?, 't')", (embedding,))
        run_sql(env, "UPDATE identities SET centroid = (SELECT embedding FROM faces) WHERE id = 'old'")
        return
    with sqlite3.connect(env["GALLERY_DB"]) as db:
        for script in SQLITE_MIGRATIONS[:2]:
            db.executescript(script)
        db.execute("PRAGMA user_version=2")
        db.execute("INSERT INTO gallery_meta (key, value) VALUES ('epoch', 'old')")
        db.execute("INSERT INTO identities VALUES ('old', ?, '{}', 't', 't')", (name,))
        db.execute("INSERT INTO faces (identity_id, embedding, created_at) VALUES ('old', ?, 't')",
                   (embedding.tobytes(),))


def test_a_gallery_from_before_fingerprints_records_the_served_model_and_keeps_working(
    triton, tmp_path: Path, store_env, lfw_dir: Path, api  # noqa: F811
) -> None:
    [person] = people(lfw_dir, 3, 1)
    answer = api.post("/embedding", files={"image": (person[0].name, person[0].read_bytes())})
    old_gallery(store_env, "Old Timer", np.asarray(answer.json()["embedding"], np.float32))
    server = ApiProcess({"TRITON_URL": triton.url, **store_env}, tmp_path / "api.log").start()
    try:
        with server.client() as client:
            [face] = client.get("/identities/old/faces").json()["faces"]
            assert face["source"] is None and face["has_crop"] is False
            assert set(face["quality"].values()) == {None} and set(face["pose"].values()) == {None}
        assert identified(server, {"old": person[1]}) == {"old": "old"}
    finally:
        server.stop()
    network, sha256 = served_model(triton)
    assert recorded_model(store_env) == (network, sha256)
    assert run_sql(store_env, "SELECT model_sha256 FROM faces") == [(sha256,)]
    assert (f"the gallery had no model fingerprint; recorded the served recognizer {network} (sha256 {sha256[:16]}"
            "...) as the model of its 1 face samples") in server.log_path.read_text()

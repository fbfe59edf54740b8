"""The PostgreSQL gallery's schema: versioned migrations, run under an advisory lock.

`gallery.postgres` runs `migrate` when it opens a database; several replicas may start together.
"""

from __future__ import annotations

import psycopg

from gallery.store import EMBEDDING_DIM, ModelFingerprint

MIGRATION_LOCK = 0x46525452  # "FRTR": pg_advisory_xact_lock key for schema changes

# Every migration is split on ";" and run statement by statement: no ";" inside a statement.
MIGRATIONS: list[str] = [
    f"""
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE identities (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        metadata JSONB NOT NULL DEFAULT '{{}}',
        centroid vector({EMBEDDING_DIM}),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE faces (
        id BIGSERIAL PRIMARY KEY,
        identity_id TEXT NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        embedding vector({EMBEDDING_DIM}) NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX faces_by_identity ON faces (identity_id);
    CREATE INDEX identities_by_created ON identities (created_at, id);
    CREATE INDEX faces_hnsw ON faces USING hnsw (embedding vector_cosine_ops);
    CREATE INDEX identities_hnsw ON identities USING hnsw (centroid vector_cosine_ops);
    """,
    # 2: samples are indexed as halfvec (measured: half the index, build memory and best-sample search
    # time, the same top-1); the stored vectors and similarities stay float32. Rebuilds the index once,
    # serially: a parallel build takes all of maintenance_work_mem from /dev/shm at once, and a
    # container's is 64 MB unless raised (the pgvector images of docker-compose.yml and deploy/).
    f"""
    SET LOCAL maintenance_work_mem = '1GB';
    SET LOCAL max_parallel_maintenance_workers = 0;
    DROP INDEX faces_hnsw;
    CREATE INDEX faces_hnsw ON faces USING hnsw ((embedding::halfvec({EMBEDDING_DIM})) halfvec_cosine_ops);
    """,
    # 3: centroid search scans binary-quantised centroids exactly (measured: HNSW over 200,000
    # centroids of random people found the exact top-1 for 58 % of probes; this scan for 100 %).
    # Adding the stored column rewrites the identities table once; its HNSW index goes.
    f"""
    ALTER TABLE identities ADD COLUMN centroid_bits bit({EMBEDDING_DIM})
        GENERATED ALWAYS AS (binary_quantize(centroid)::bit({EMBEDDING_DIM})) STORED;
    DROP INDEX identities_hnsw;
    """,
    # 4: per-sample faces and the model that made them (issue 22), as SQLite's migration 3: each
    # sample's measurements at enrollment (NULL for those stored before), the recognizer's
    # sha256, the aligned crop in a table of its own; the gallery's recorded model in gallery_meta.
    """
    ALTER TABLE faces ADD COLUMN face_size DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN sharpness DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN detection_score DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN yaw DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN pitch DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN roll DOUBLE PRECISION;
    ALTER TABLE faces ADD COLUMN source TEXT;
    ALTER TABLE faces ADD COLUMN model_sha256 TEXT;
    CREATE TABLE face_crops (
        face_id BIGINT PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE,
        crop BYTEA NOT NULL
    );
    CREATE TABLE gallery_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )
    """,
]


def migrate(url: str) -> None:
    """Bring the database at `url` to the newest schema, in one transaction under the advisory lock."""
    conn = psycopg.connect(url, autocommit=False)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            cursor.execute("CREATE TABLE IF NOT EXISTS frtriton_schema (version INTEGER NOT NULL)")
            cursor.execute("SELECT version FROM frtriton_schema")
            row = cursor.fetchone()
            version = row[0] if row else 0
            if row is None:
                cursor.execute("INSERT INTO frtriton_schema (version) VALUES (0)")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    cursor.execute(statement)
                cursor.execute("UPDATE frtriton_schema SET version = %s", (number,))
        conn.commit()
    finally:
        conn.close()


def read_model(cursor: psycopg.Cursor) -> ModelFingerprint | None:
    cursor.execute("SELECT key, value FROM gallery_meta WHERE key IN ('model_network', 'model_sha256')")
    meta = dict(cursor.fetchall())
    return ModelFingerprint(meta.get("model_network", ""), meta["model_sha256"]) if "model_sha256" in meta else None


def write_model(cursor: psycopg.Cursor, model: ModelFingerprint) -> None:
    cursor.executemany(
        "INSERT INTO gallery_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [("model_network", model.network), ("model_sha256", model.sha256)],
    )

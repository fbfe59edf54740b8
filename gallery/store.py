"""What a gallery is: the `Gallery` interface both backends implement, and its types.

`sqlite.SqliteGallery` is the embedded default, `postgres.PgGallery` the shared
PostgreSQL/pgvector one for several replicas; `factory.open_gallery` picks one. Both take
their types from here, so neither imports the other.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
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
    def create_many(self, people: Sequence[tuple[str, dict, np.ndarray]]) -> list[Identity]: ...
    def add_faces(self, identity_id: str, embeddings: np.ndarray) -> Identity: ...
    def get(self, identity_id: str) -> Identity: ...
    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]: ...
    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity: ...
    def merge(self, target_id: str, source_id: str) -> Identity: ...
    def delete(self, identity_id: str) -> None: ...
    def delete_all(self) -> int: ...
    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]: ...
    def prepare(self) -> None:
        """Build or load the search index now (at start-up) rather than at the first search."""
    def face_count(self) -> int: ...
    def index_status(self) -> dict:
        """{"index", "library", "generation", "building", "loaded_from_file"} of the search index."""
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

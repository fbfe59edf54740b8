"""The in-memory search index of the SQLite gallery: every stored sample as one matrix.

Exact cosine search; people scored by the normalised centroid of their samples (default) or
by their best sample: on LFW both name every enrolled person, and the centroid calls more
strangers unknown at every threshold (README).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gallery.store import EMBEDDING_DIM, Match, as_vectors


@dataclass
class FaceIndex:
    """Every stored sample as one matrix; people scored by their best sample.

    vectors (N, 512) float32 unit rows; owners (N,) index into ids/names. Updated in
    place after this process's own commits, rebuilt when another process commits.
    """

    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    owners: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    _centroids: np.ndarray | None = None  # cache, dropped on every change
    _capacity: int = 0  # rows allocated in the buffers behind `vectors` / `owners`
    _vector_buffer: np.ndarray | None = None
    _owner_buffer: np.ndarray | None = None

    def centroids(self) -> np.ndarray:
        """(people, 512) unit-length mean of each person's samples."""
        if self._centroids is None:
            sums = np.zeros((len(self.ids), EMBEDDING_DIM), np.float32)
            np.add.at(sums, self.owners, self.vectors)
            self._centroids = as_vectors(sums)
        return self._centroids

    @staticmethod
    def build(rows: Sequence[tuple[str, str, bytes]]) -> FaceIndex:
        """rows: (identity id, name, float32 embedding bytes)."""
        index = FaceIndex()
        if not rows:
            return index
        positions: dict[str, int] = {}
        owners = np.empty(len(rows), np.int64)
        for row, (identity_id, name, _) in enumerate(rows):
            if identity_id not in positions:
                positions[identity_id] = len(index.ids)
                index.ids.append(identity_id)
                index.names.append(name)
            owners[row] = positions[identity_id]
        index.vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(-1, EMBEDDING_DIM).copy()
        index.owners = owners
        return index

    def _position(self, identity_id: str) -> int | None:
        try:
            return self.ids.index(identity_id)
        except ValueError:
            return None

    def add(self, identity_id: str, name: str, vectors: np.ndarray) -> None:
        position = self._position(identity_id)
        if position is None:
            position = len(self.ids)
            self.ids.append(identity_id)
            self.names.append(name)
        added = as_vectors(vectors)
        count, needed = self.vectors.shape[0], self.vectors.shape[0] + added.shape[0]
        if self._capacity < needed:  # grow geometrically: appends stay amortised O(1)
            self._capacity = max(needed, 2 * self._capacity, 1024)
            grown = np.empty((self._capacity, EMBEDDING_DIM), np.float32)
            grown[:count] = self.vectors
            owners = np.empty(self._capacity, np.int64)
            owners[:count] = self.owners
            self._vector_buffer, self._owner_buffer = grown, owners
        self._vector_buffer[count:needed] = added
        self._owner_buffer[count:needed] = position
        self.vectors = self._vector_buffer[:needed]
        self.owners = self._owner_buffer[:needed]
        self._centroids = None

    def rename(self, identity_id: str, name: str) -> None:
        position = self._position(identity_id)
        if position is not None:
            self.names[position] = name

    def remove(self, identity_id: str) -> None:
        position = self._position(identity_id)
        if position is None:
            return
        keep = self.owners != position
        self.vectors, self.owners = self.vectors[keep], self.owners[keep]
        self._capacity = 0  # fresh arrays: the next add reallocates
        self.owners[self.owners > position] -= 1
        del self.ids[position], self.names[position]
        self._centroids = None

    def merge(self, target_id: str, source_id: str) -> None:
        target, source = self._position(target_id), self._position(source_id)
        if target is not None and source is not None:
            self.owners[self.owners == source] = target
        self.remove(source_id)
        self._centroids = None

    def search(self, queries: np.ndarray, top_k: int, scoring: str = "centroid") -> list[list[Match]]:
        """For each query (Q, 512): the top_k people, best first, by centroid or best-sample cosine."""
        queries = as_vectors(queries)
        if not self.ids:
            return [[] for _ in range(queries.shape[0])]
        if scoring == "centroid":
            best = queries @ self.centroids().T  # (Q, people)
        else:
            similarities = queries @ self.vectors.T  # (Q, faces)
            best = np.full((queries.shape[0], len(self.ids)), -np.inf, np.float32)
            np.maximum.at(best, (slice(None), self.owners), similarities)
        k = min(top_k, len(self.ids))
        if k < len(self.ids):  # partial selection first: O(people) instead of a full sort
            candidates = np.argpartition(-best, k - 1, axis=1)[:, :k]
            picked = np.take_along_axis(best, candidates, axis=1)
            order = np.take_along_axis(candidates, np.argsort(-picked, axis=1, kind="stable"), axis=1)
        else:
            order = np.argsort(-best, axis=1, kind="stable")
        return [[Match(self.ids[p], self.names[p], float(best[q, p])) for p in row] for q, row in enumerate(order)]

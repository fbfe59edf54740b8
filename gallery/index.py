"""The exact in-memory search index of the SQLite gallery: every stored sample as one matrix.

Exact cosine search; people scored by the normalised centroid of their samples (default) or
by their best sample: on LFW both name every enrolled person, and the centroid calls more
strangers unknown at every threshold (README). It is the ground truth the approximate index
(`gallery.ann`) is tested against, the index of small galleries, and what answers while an
approximate index is being built.

Both indexes are kept in step with the database the same way: `replace(person, all of
their samples now)` after every change (an empty set removes the person), so an index only
ever needs a person's current rows, never the history of what happened to them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from gallery.store import EMBEDDING_DIM, Match, as_vectors

# A person's rows as the database has them now: (identity id, name, face ids (n,), vectors (n, 512)).
PersonRows = tuple[str, str, np.ndarray, np.ndarray]
MIN_CAPACITY = 1024  # rows first allocated; growth doubles from there


@dataclass
class People:
    """Positions of people in an index: stable while they are enrolled, never reused.

    A removed person leaves a hole (id None) so that every position stored elsewhere (the
    owners of samples, the keys of an approximate index) stays valid without renumbering.
    """

    ids: list[str | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)

    def position(self, identity_id: str) -> int | None:
        return self.positions.get(identity_id)

    def add(self, identity_id: str, name: str) -> int:
        position = len(self.ids)
        self.ids.append(identity_id)
        self.names.append(name)
        self.positions[identity_id] = position
        return position

    def remove(self, position: int) -> None:
        identity_id = self.ids[position]
        if identity_id is not None:
            del self.positions[identity_id]
        self.ids[position] = None

    def __len__(self) -> int:
        """Enrolled people (holes not counted)."""
        return len(self.positions)

    def match(self, position: int, similarity: float) -> Match:
        return Match(self.ids[position], self.names[position], float(similarity))


def top_people(scores: np.ndarray, top_k: int, people: People) -> list[list[Match]]:
    """(Q, P) scores, -inf at holes -> for each query the top_k people, best first."""
    k = min(top_k, len(people))
    if k == 0:
        return [[] for _ in range(scores.shape[0])]
    if k < scores.shape[1]:  # partial selection first: O(people) instead of a full sort
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        picked = np.take_along_axis(scores, candidates, axis=1)
        order = np.take_along_axis(candidates, np.argsort(-picked, axis=1, kind="stable"), axis=1)
    else:
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[people.match(p, scores[q, p]) for p in row] for q, row in enumerate(order)]


@dataclass
class FaceIndex:
    """Every stored sample as one matrix, searched exactly.

    vectors (N, 512) float32 unit rows; owners (N,) person positions; keys (N,) face ids
    (the database's); centroids (P, 512) the unit mean of each position's samples (zero
    at holes). `generation` is the database generation the index reflects.
    """

    people: People = field(default_factory=People)
    generation: int = -1
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    owners: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    _centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, EMBEDDING_DIM), np.float32))
    _buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # capacity behind the three arrays
    _holes: list[int] = field(default_factory=list)  # positions of removed people

    kind = "exact"

    @staticmethod
    def build(people_rows: Iterable[PersonRows], generation: int = -1) -> FaceIndex:
        """An index of every person's rows (each person once)."""
        batch = [rows for rows in people_rows if len(rows[2])]
        if not batch:
            return FaceIndex(generation=generation)
        return FaceIndex.from_flat(
            [rows[0] for rows in batch], [rows[1] for rows in batch], np.asarray([len(rows[2]) for rows in batch]),
            np.concatenate([np.asarray(rows[2], np.int64) for rows in batch]),
            as_vectors(np.concatenate([rows[3] for rows in batch])), generation,
        )

    @staticmethod
    def from_flat(ids: list[str], names: list[str], counts: np.ndarray, keys: np.ndarray, vectors: np.ndarray,
                  generation: int = -1) -> FaceIndex:
        """People (P ids, names, sample counts (P,)) and their samples, grouped in that order:
        keys (N,) face ids and vectors (N, 512) unit rows as stored, N = counts.sum(), every count >= 1."""
        index = FaceIndex(generation=generation)
        for identity_id, name in zip(ids, names, strict=True):
            index.people.add(identity_id, name)
        if not len(ids):
            return index
        index.vectors = np.asarray(vectors, np.float32)
        index.keys = np.asarray(keys, np.int64)
        index.owners = np.repeat(np.arange(len(ids)), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        index._centroids = as_vectors(np.add.reduceat(index.vectors, starts, axis=0))
        return index

    def snapshot(self) -> FaceIndex:
        """A copy that later changes to this index do not touch (samples shared: they are only appended to)."""
        people = People(list(self.people.ids), list(self.people.names), dict(self.people.positions))
        return FaceIndex(people, self.generation, self.vectors, self.owners, self.keys, self._centroids.copy(),
                         None, list(self._holes))

    # ---- size
    def face_count(self) -> int:
        return int(self.vectors.shape[0])

    def people_count(self) -> int:
        return len(self.people)

    def centroids(self) -> np.ndarray:
        """(positions, 512) unit-length mean of each person's samples; zero rows at holes."""
        return self._centroids

    # ---- changes
    def replace(self, identity_id: str, name: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Make `identity_id`'s samples exactly (keys, vectors); none removes the person."""
        keys = np.asarray(keys, np.int64)
        position = self.people.position(identity_id)
        if position is None and not len(keys):
            return
        if not len(keys):
            self._drop_rows(self.owners == position)
            self.people.remove(position)
            self._centroids[position] = 0
            self._holes.append(position)
            return
        vectors = as_vectors(vectors)
        if position is None:
            position = self.people.add(identity_id, name)
            self._centroids = np.concatenate([self._centroids, np.zeros((1, EMBEDDING_DIM), np.float32)])
            new = np.ones(len(keys), bool)
        else:
            self.people.names[position] = name
            mine = self.owners == position
            kept = np.isin(self.keys[mine], keys)
            if not kept.all():  # some samples went (a merge moved them, or they were deleted)
                self._drop_rows(mine)
                new = np.ones(len(keys), bool)
            else:  # the usual case, added samples: append only those
                new = ~np.isin(keys, self.keys[mine])
        self._append(position, keys[new], vectors[new])
        self._centroids[position] = as_vectors(vectors.sum(axis=0))[0]

    def _drop_rows(self, drop: np.ndarray) -> None:
        keep = ~drop
        self.vectors, self.owners, self.keys = self.vectors[keep], self.owners[keep], self.keys[keep]
        self._buffers = None  # fresh arrays: the next append reallocates

    def _append(self, position: int, keys: np.ndarray, vectors: np.ndarray) -> None:
        count, needed = self.face_count(), self.face_count() + len(keys)
        if self._buffers is None or self._buffers[0].shape[0] < needed:  # grow geometrically
            capacity = max(needed, 2 * (0 if self._buffers is None else self._buffers[0].shape[0]), MIN_CAPACITY)
            grown = (np.empty((capacity, EMBEDDING_DIM), np.float32), np.empty(capacity, np.int64),
                     np.empty(capacity, np.int64))
            grown[0][:count], grown[1][:count], grown[2][:count] = self.vectors, self.owners, self.keys
            self._buffers = grown
        vector_buffer, owner_buffer, key_buffer = self._buffers
        vector_buffer[count:needed] = vectors
        owner_buffer[count:needed] = position
        key_buffer[count:needed] = keys
        self.vectors, self.owners, self.keys = vector_buffer[:needed], owner_buffer[:needed], key_buffer[:needed]

    # ---- search
    def scores(self, queries: np.ndarray, scoring: str) -> np.ndarray:
        """(Q, 512) -> (Q, positions) cosine of each person (centroid or best sample); -inf at holes."""
        queries = as_vectors(queries)
        positions = len(self.people.ids)
        if scoring == "centroid":
            scores = queries @ self._centroids.T
        else:
            scores = np.full((queries.shape[0], positions), -np.inf, np.float32)
            np.maximum.at(scores, (slice(None), self.owners), queries @ self.vectors.T)
        if self._holes:
            scores[:, self._holes] = -np.inf
        return scores

    def search(self, queries: np.ndarray, top_k: int, scoring: str = "centroid") -> list[list[Match]]:
        """For each query (Q, 512): the top_k people, best first, by centroid or best-sample cosine."""
        if not len(self.people):
            return [[] for _ in range(as_vectors(queries).shape[0])]
        return top_people(self.scores(queries, scoring), top_k, self.people)

"""The approximate index of large galleries: 64-byte sign codes of every person, scanned with faiss.

Chosen by `benchmarks/ann_libraries.py` on this machine (README, Scale). On identity-structured
vectors (each person a random centre, as 512-d face embeddings are) the HNSW graphs of usearch
and faiss lose the nearest person far too often at 200,000 people (top-1 agreement 30–87 %
for usearch at M=16), because such centres are spread evenly in 512 dimensions and a graph
walk has no slope to follow. A mated probe, though, lies far nearer its own person (cosine
0.4–0.7) than any stranger (0 ± 0.05), and the Hamming distance of sign bits keeps that gap:
an exhaustive scan of 512-bit codes (faiss's SIMD `knn_hamming`, 12.8 MB at 200,000 people)
finds the person every time in well under a millisecond.

The codes only propose candidates; the answer is computed exactly:
- `centroid` scoring: the candidates' float32 centroids (kept in memory) are scored, and the
  top_k chosen by those scores: the similarities of the exact index (to float32 rounding).
- `best_sample` scoring: the best candidates by centroid are re-scored from their float32
  samples in the database (`fetch`), as the exact index scores them.
Approximation can only miss a person whose code did not come near the probe's, which the tests
and `benchmarks/gallery_scale.py` measure (top-1 agreement with exact search).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from gallery.index import FaceIndex, People, PersonRows, top_people
from gallery.store import EMBEDDING_DIM, Match, as_vectors

LIBRARY = f"faiss {faiss.__version__}"
# One thread a search: the API runs searches of concurrent requests side by side, and faiss's
# OpenMP team on two busy cores waits for itself (a 0.5 ms scan took 20–40 ms with 2 threads).
faiss.omp_set_num_threads(1)
FORMAT = "frtriton-codes/1"
CODE_BYTES = EMBEDDING_DIM // 8
MIN_CAPACITY = 1024

# (identity ids) -> {identity id: (n, 512) float32 samples as stored}: best-sample re-scoring's source.
Fetch = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class AnnParameters:
    """How many candidates each stage keeps (README, Scale: chosen by benchmarks/gallery_scale.py)."""

    candidates: int = 1024  # people the code scan proposes per query, re-scored by centroid
    sample_candidates: int = 32  # best_sample: people re-scored from their samples (at least top_k)


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    """(N, 512) -> (N, 64) uint8: bit i set where component i is positive."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


class AnnIndex:
    """People, their float32 centroids and sign codes; same `replace`/`search` as FaceIndex."""

    kind = "ann"

    def __init__(self, scoring: str, parameters: AnnParameters, generation: int = -1) -> None:
        self.scoring = scoring
        self.parameters = parameters
        self.generation = generation
        self.people = People()
        self._centroids = np.zeros((0, EMBEDDING_DIM), np.float32)  # rows = positions (capacity)
        self._codes = np.zeros((0, CODE_BYTES), np.uint8)
        self._counts = np.zeros(0, np.int64)  # samples per position, 0 at holes

    # ---- building
    @staticmethod
    def from_exact(exact: FaceIndex, scoring: str, parameters: AnnParameters) -> AnnIndex:
        """The same people as `exact` (a snapshot nobody changes any more), with their codes."""
        index = AnnIndex(scoring, parameters, exact.generation)
        index.people = People(list(exact.people.ids), list(exact.people.names), dict(exact.people.positions))
        index._centroids = exact.centroids().copy()
        index._codes = sign_codes(index._centroids)
        index._counts = np.bincount(exact.owners, minlength=len(index.people.ids)).astype(np.int64)
        return index

    def snapshot(self) -> AnnIndex:
        """A copy that later changes to this index do not touch (what a background save writes)."""
        used = len(self.people.ids)
        copy = AnnIndex(self.scoring, self.parameters, self.generation)
        copy.people = People(list(self.people.ids), list(self.people.names), dict(self.people.positions))
        copy._centroids, copy._codes = self._centroids[:used].copy(), self._codes[:used].copy()
        copy._counts = self._counts[:used].copy()
        return copy

    def _reserve(self, positions: int) -> None:
        if positions > self._codes.shape[0]:  # grow geometrically: appends stay amortised O(1)
            capacity = max(positions, 2 * self._codes.shape[0], MIN_CAPACITY)
            used = len(self.people.ids)
            centroids = np.zeros((capacity, EMBEDDING_DIM), np.float32)
            codes = np.zeros((capacity, CODE_BYTES), np.uint8)
            counts = np.zeros(capacity, np.int64)
            centroids[:used], codes[:used], counts[:used] = (self._centroids[:used], self._codes[:used],
                                                             self._counts[:used])
            self._centroids, self._codes, self._counts = centroids, codes, counts

    # ---- size
    def face_count(self) -> int:
        return int(self._counts.sum())

    def people_count(self) -> int:
        return len(self.people)

    def memory_bytes(self) -> int:
        return self._centroids.nbytes + self._codes.nbytes + self._counts.nbytes

    # ---- changes
    def replace(self, identity_id: str, name: str, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Make `identity_id`'s samples exactly (keys, vectors); none removes the person."""
        position = self.people.position(identity_id)
        if position is None and not len(keys):
            return
        if position is None:
            self._reserve(len(self.people.ids) + 1)
            position = self.people.add(identity_id, name)
        if not len(keys):
            self.people.remove(position)
            self._centroids[position], self._codes[position], self._counts[position] = 0, 0, 0
            return
        self.people.names[position] = name
        self._centroids[position] = as_vectors(np.asarray(vectors, np.float32).sum(axis=0))[0]
        self._codes[position] = sign_codes(self._centroids[position : position + 1])[0]
        self._counts[position] = len(keys)

    # ---- search
    def candidates(self, queries: np.ndarray, count: int) -> np.ndarray:
        """(Q, 512) -> (Q, ≤ count) positions of the people whose codes lie nearest, nearest first."""
        used = len(self.people.ids)
        count = min(count, used)
        if count == 0:
            return np.zeros((queries.shape[0], 0), np.int64)
        _, positions = faiss.knn_hamming(sign_codes(queries), self._codes[:used], count)
        return positions

    def search(self, queries: np.ndarray, top_k: int, fetch: Fetch) -> list[list[Match]]:
        """Top_k people per query: the code scan's candidates, scored exactly."""
        queries = as_vectors(queries)
        if not len(self.people):
            return [[] for _ in range(queries.shape[0])]
        proposed = self.candidates(queries, max(top_k, self.parameters.candidates))
        # (Q, R) exact centroid cosine of each proposed person; holes (zero codes) never win.
        scores = np.einsum("qd,qrd->qr", queries, self._centroids[proposed])
        scores[self._counts[proposed] == 0] = -np.inf
        if self.scoring == "centroid":
            return [self._ranked(proposed[q], scores[q], top_k) for q in range(queries.shape[0])]
        return self._best_sample(queries, proposed, scores, top_k, fetch)

    def _ranked(self, positions: np.ndarray, scores: np.ndarray, top_k: int) -> list[Match]:
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [self.people.match(int(positions[i]), scores[i]) for i in order if np.isfinite(scores[i])]

    def _best_sample(self, queries: np.ndarray, proposed: np.ndarray, scores: np.ndarray, top_k: int,
                     fetch: Fetch) -> list[list[Match]]:
        keep = max(top_k, self.parameters.sample_candidates)
        shortlists = [proposed[q, np.argsort(-scores[q], kind="stable")[:keep]] for q in range(len(queries))]
        wanted = sorted({int(p) for row in shortlists for p in row if self._counts[p]})
        stored = fetch([self.people.ids[p] for p in wanted])
        rows: list[PersonRows] = [(self.people.ids[p], self.people.names[p], np.arange(len(v)), v)
                                  for p in wanted if len(v := stored.get(self.people.ids[p], ()))]
        exact = FaceIndex.build(rows)
        sample_scores = exact.scores(queries, "best_sample")  # (Q, shortlisted people)
        results = []
        for q, row in enumerate(shortlists):
            columns = [c for p in row if (c := exact.people.position(self.people.ids[p])) is not None]
            mine = np.full(sample_scores.shape[1], -np.inf, np.float32)
            mine[columns] = sample_scores[q, columns]
            results.append([m for m in top_people(mine[None], top_k, exact.people)[0] if np.isfinite(m.similarity)])
        return results

    # ---- persistence
    def save(self, path: Path) -> dict:
        """Write the index to `path` (one .npz); returns what its manifest records."""
        used = len(self.people.ids)
        with path.open("wb") as handle:
            np.savez(handle, centroids=self._centroids[:used], codes=self._codes[:used], counts=self._counts[:used],
                     people=np.frombuffer(json.dumps([self.people.ids, self.people.names]).encode(), np.uint8))
        return {"format": FORMAT, "library": LIBRARY, "file": path.name, "positions": used, "people": len(self.people)}

    @staticmethod
    def load(path: Path, manifest: dict, scoring: str, parameters: AnnParameters, generation: int) -> AnnIndex:
        """The index a manifest describes; ValueError when the file is not such an index or not whole."""
        if manifest.get("format") != FORMAT:
            raise ValueError(f"index format {manifest.get('format')!r}, expected {FORMAT!r}")
        try:
            with np.load(path, allow_pickle=False) as table:
                ids, names = json.loads(table["people"].tobytes())
                centroids, codes, counts = table["centroids"], table["codes"], table["counts"]
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError) as error:  # cut short, or not ours
            raise ValueError(f"unreadable index file: {error}") from None
        used = manifest["positions"]
        if not (len(ids) == len(names) == used == len(centroids) == len(codes) == len(counts)):
            raise ValueError("index file does not hold the people its manifest lists")
        if centroids.shape[1:] != (EMBEDDING_DIM,) or codes.shape[1:] != (CODE_BYTES,):
            raise ValueError(f"index file holds vectors of shape {centroids.shape[1:]}, not ({EMBEDDING_DIM},)")
        if not np.array_equal(codes, sign_codes(centroids)):
            raise ValueError("index file's codes do not match its centroids")
        index = AnnIndex(scoring, parameters, generation)
        index.people = People(ids, names, {i: p for p, i in enumerate(ids) if i is not None})
        if len(index.people) != manifest["people"]:
            raise ValueError("index file does not hold the people its manifest lists")
        index._centroids, index._codes, index._counts = centroids, codes, counts.astype(np.int64)
        return index

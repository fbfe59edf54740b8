"""Embeddings sent by clients (`POST /identify/embedding`, enrollment from embeddings): checked and unit length.

A client that computes or caches embeddings sends them as lists of numbers; what the gallery
stores and searches are (N, 512) float32 unit rows (`gallery.store.as_vectors`). Anything else
is refused whole, naming the first bad vector, before the gallery is touched: a vector of the
wrong length, with a value that is not a finite number (NaN, ±inf, a string, a bool), or zero
(no direction to normalise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np

from errors import ImageTooLarge, InvalidEmbedding
from gallery.store import EMBEDDING_DIM


def _problem(row: object) -> str | None:
    """Why one vector cannot be used, or None."""
    if not isinstance(row, Sequence) or isinstance(row, str | bytes):
        return f"must be a list of {EMBEDDING_DIM} numbers, not {type(row).__name__}"
    if len(row) != EMBEDDING_DIM:
        return f"has {len(row)} numbers; the recognizer's embeddings have {EMBEDDING_DIM}"
    for position, value in enumerate(row):
        if isinstance(value, bool) or not isinstance(value, Real):
            return f"[{position}] is {type(value).__name__}, not a number"
        if not math.isfinite(value):
            return f"[{position}] is {value}: every value must be a finite number"
    return None


def client_vectors(rows: object, limit: int, field: str = "embeddings") -> np.ndarray:
    """(N, 512) float32 unit rows from a client's `rows` (a list of N lists of 512 numbers, 1 <= N <= limit).

    Raises InvalidEmbedding (422) naming the first unusable vector (`embeddings[2]: ...`), or
    ImageTooLarge (413) for more than `limit` vectors.
    """
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise InvalidEmbedding(f"{field} must be a list of vectors (lists of {EMBEDDING_DIM} numbers)")
    if not rows:
        raise InvalidEmbedding(f"{field} is empty: send at least one vector")
    if len(rows) > limit:
        raise ImageTooLarge(f"at most {limit} vectors per request; {len(rows)} were sent")
    for index, row in enumerate(rows):
        if (problem := _problem(row)) is not None:
            raise InvalidEmbedding(f"{field}[{index}] {problem}")
    vectors = np.asarray(rows, dtype=np.float64)
    # Scaled by the largest magnitude first, so that neither huge values (1e300) overflow the norm nor
    # tiny ones (1e-300) underflow it: only a vector of zeros has no direction.
    peaks = np.abs(vectors).max(axis=1, keepdims=True)
    if (zero := np.flatnonzero(peaks[:, 0] == 0)).size:
        raise InvalidEmbedding(f"{field}[{zero[0]}] is all zeros: a zero vector has no direction to compare")
    scaled = vectors / peaks
    return (scaled / np.linalg.norm(scaled, axis=1, keepdims=True)).astype(np.float32)

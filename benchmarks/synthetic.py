"""Identity-structured synthetic face embeddings, for gallery benchmarks and index tests.

Uniform random vectors are all nearly orthogonal, which flatters an approximate index: the
true neighbour stands far apart from everything else. Real ArcFace galleries are clustered:
a person's samples lie at a cosine of about 0.6–0.8 to that person's mean, and strangers at
about 0 ± 0.1. These vectors are drawn that way, so ANN recall is measured on the hard case.
"""

from __future__ import annotations

import numpy as np

EMBEDDING_DIM = 512
SAMPLE_COSINE = (0.6, 0.8)  # cosine of a sample to its person's centre, drawn uniformly


def unit_rows(data: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32, every row scaled to unit length."""
    data = np.asarray(data, np.float32)
    return data / np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)


def centres(people: int, seed: int, dim: int = EMBEDDING_DIM) -> np.ndarray:
    """(people, dim) random unit vectors: one per person."""
    return unit_rows(np.random.default_rng(seed).standard_normal((people, dim), np.float32))


def samples_around(centre_rows: np.ndarray, seed: int, cosine: tuple[float, float] = SAMPLE_COSINE) -> np.ndarray:
    """(N, dim) centres -> (N, dim) unit samples, each at a cosine in `cosine` to its centre.

    sample = cos_t * centre + sin_t * u, with u a random unit vector orthogonal to the centre.
    """
    rng = np.random.default_rng(seed)
    count, dim = centre_rows.shape
    noise = rng.standard_normal((count, dim), np.float32)
    noise -= np.sum(noise * centre_rows, axis=1, keepdims=True) * centre_rows  # orthogonal part only
    noise = unit_rows(noise)
    cos_t = rng.uniform(*cosine, size=(count, 1)).astype(np.float32)
    return unit_rows(cos_t * centre_rows + np.sqrt(1 - cos_t**2) * noise)


def gallery(people: int, per_person: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """centres (P, 512), samples (P * per_person, 512) and their owners (P * per_person,) person index."""
    centre_rows = centres(people, seed)
    owners = np.repeat(np.arange(people), per_person)
    return centre_rows, samples_around(centre_rows[owners], seed + 1), owners


def mated_probes(centre_rows: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 512) new samples of randomly chosen enrolled people, and those people (count,)."""
    who = np.random.default_rng(seed).integers(0, centre_rows.shape[0], count)
    return samples_around(centre_rows[who], seed + 1), who

"""Client embeddings: what is accepted (and made unit length) and what is refused, with its reason."""

from __future__ import annotations

import math

import numpy as np
import pytest

from errors import ImageTooLarge, InvalidEmbedding
from usecases.vectors import client_vectors

DIM = 512


def vector(value: float = 0.5, **at: object) -> list:
    row: list = [value] * DIM
    for position, item in at.items():
        row[int(position.removeprefix("p"))] = item
    return row


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ("not a list", "must be a list of vectors"),
        ({"a": 1}, "must be a list of vectors"),
        ([], "is empty"),
        ([[0.1] * 511], "embeddings[0] has 511 numbers"),
        ([vector(), [0.1] * 513], "embeddings[1] has 513 numbers"),
        ([vector(), "abc"], "embeddings[1] must be a list of 512 numbers, not str"),
        ([vector(p3=math.nan)], "embeddings[0] [3] is nan"),
        ([vector(p0=math.inf)], "embeddings[0] [0] is inf"),
        ([vector(p7=-math.inf)], "embeddings[0] [7] is -inf"),
        ([vector(p5="0.1")], "embeddings[0] [5] is str, not a number"),
        ([vector(p5=True)], "embeddings[0] [5] is bool, not a number"),
        ([vector(p5=None)], "embeddings[0] [5] is NoneType, not a number"),
        ([vector(), vector(0.0)], "embeddings[1] is all zeros"),
    ],
)
def test_unusable_vectors_are_refused_naming_the_first(rows: object, fragment: str) -> None:
    with pytest.raises(InvalidEmbedding) as refused:
        client_vectors(rows, limit=10)
    assert fragment in refused.value.message


def test_more_vectors_than_the_limit_are_too_many() -> None:
    with pytest.raises(ImageTooLarge, match="at most 2 vectors per request; 3 were sent"):
        client_vectors([vector()] * 3, limit=2)


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1.0, 3.0, 1e30, 1e300])
def test_vectors_of_any_finite_size_come_back_unit_length_with_their_direction(scale: float) -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, DIM))
    got = client_vectors((rows * scale).tolist(), limit=3)
    assert got.dtype == np.float32 and got.shape == (3, DIM)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, rows / np.linalg.norm(rows, axis=1, keepdims=True), atol=1e-6)


def test_integers_are_numbers_too() -> None:
    got = client_vectors([[1] * DIM], limit=1)
    np.testing.assert_allclose(got, 1 / math.sqrt(DIM), atol=1e-7)

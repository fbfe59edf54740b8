"""gallery/ann.py: the sign-code index against exact search on identity-structured vectors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from gallery.ann import FORMAT, AnnIndex, AnnParameters, sign_codes
from gallery.index import FaceIndex
from gallery.store import EMBEDDING_DIM

sys.path.insert(0, str(ROOT / "benchmarks"))
import synthetic  # noqa: E402

PEOPLE, PER_PERSON = 3000, 3
NONE = (np.zeros(0, np.int64), np.zeros((0, EMBEDDING_DIM), np.float32))


@pytest.fixture(scope="module")
def structured() -> tuple[list, np.ndarray, np.ndarray]:
    """(person rows, centres, mated probes with their people): 3,000 people x 3 samples."""
    centres, samples, owners = synthetic.gallery(PEOPLE, PER_PERSON, seed=3)
    rows = [(f"id{p}", f"person {p}", np.flatnonzero(owners == p), samples[owners == p]) for p in range(PEOPLE)]
    probes, who = synthetic.mated_probes(centres, 400, seed=4)
    return rows, probes, who


def both(rows: list, scoring: str, candidates: int = 64) -> tuple[FaceIndex, AnnIndex]:
    exact = FaceIndex.build(rows)
    return exact, AnnIndex.from_exact(exact, scoring, AnnParameters(candidates=candidates))


def fetch_from(rows: list):
    stored = {identity_id: vectors for identity_id, _, _, vectors in rows}
    return lambda ids: {i: stored[i] for i in ids if i in stored}


def assert_same(found, truth) -> None:
    """The same people in the same order with the same similarities (to float32 rounding)."""
    assert [[m.id for m in row] for row in found] == [[m.id for m in row] for row in truth]
    for row, expected in zip(found, truth, strict=True):
        assert [m.similarity for m in row] == pytest.approx([m.similarity for m in expected], abs=1e-5)


@pytest.mark.parametrize("scoring", ["centroid", "best_sample"])
def test_the_code_index_names_who_exact_search_names_with_the_same_similarities(structured, scoring: str) -> None:
    rows, probes, who = structured
    exact, ann = both(rows, scoring)
    truth = exact.search(probes, 5, scoring)
    found = ann.search(probes, 5, fetch_from(rows))
    top1 = np.mean([a[0].id == b[0].id for a, b in zip(truth, found, strict=True)])
    assert top1 >= 0.995
    assert all(t[0].id == f"id{p}" for t, p in zip(truth, who, strict=True))  # the data is as easy as meant
    for t, f in zip(truth, found, strict=True):  # what is named carries the exact similarity
        assert f[0].similarity == pytest.approx(t[0].similarity, abs=1e-5)


def test_changes_keep_the_code_index_equal_to_exact_search(structured) -> None:
    rows, probes, _ = structured
    rows = rows[:600]
    exact, ann = both(rows, "centroid", candidates=600)
    extra = synthetic.samples_around(np.repeat(rows[5][3][:1], 2, axis=0), seed=9)
    changes = [
        ("id5", "person 5", np.append(rows[5][2], [10_001, 10_002]), np.concatenate([rows[5][3], extra])),  # faces
        ("id7", "person 7", *NONE),  # deleted
        ("id8", "renamed", rows[8][2], rows[8][3]),  # renamed
        ("id9", "person 9", np.concatenate([rows[9][2], rows[10][2]]), np.concatenate([rows[9][3], rows[10][3]])),
        ("id10", "person 10", *NONE),  # merged into 9
        ("new", "newcomer", np.array([20_000]), synthetic.centres(1, 77)),
    ]
    for change in changes:
        exact.replace(*change)
        ann.replace(*change)
    queries = np.concatenate([probes[:50], synthetic.centres(1, 77), rows[9][3][:1], rows[7][3][:1]])
    fetch = fetch_from(rows[:5] + changes + rows[11:])
    assert_same(ann.search(queries, 3, fetch), exact.search(queries, 3, "centroid"))
    assert (ann.people_count(), ann.face_count()) == (exact.people_count(), exact.face_count())
    assert {"id7", "id10"}.isdisjoint(m.id for row in ann.search(queries, 600, fetch) for m in row)


def test_an_empty_code_index_answers_no_matches() -> None:
    ann = AnnIndex("centroid", AnnParameters())
    assert ann.search(synthetic.centres(2, 1), 5, dict) == [[], []]
    ann.replace("a", "a", np.array([1]), synthetic.centres(1, 2))
    ann.replace("a", "a", *NONE)
    assert ann.search(synthetic.centres(2, 1), 5, dict) == [[], []]


def test_sign_codes_set_the_bits_of_positive_components() -> None:
    vector = np.zeros((1, EMBEDDING_DIM), np.float32)
    vector[0, [0, 9, 511]] = [1.0, 0.5, 0.25]
    vector[0, 1] = -1.0
    codes = sign_codes(vector)
    assert codes.shape == (1, 64) and codes.dtype == np.uint8
    assert np.flatnonzero(np.unpackbits(codes[0])).tolist() == [0, 9, 511]


def test_a_saved_code_index_loads_with_the_same_answers(structured, tmp_path: Path) -> None:
    rows, probes, _ = structured
    _, ann = both(rows[:500], "centroid")
    ann.replace("id3", "person 3", *NONE)
    manifest = ann.snapshot().save(tmp_path / "i.npz")
    loaded = AnnIndex.load(tmp_path / "i.npz", manifest, "centroid", AnnParameters(candidates=64), 7)
    assert loaded.generation == 7 and loaded.people_count() == 499
    fetch = fetch_from(rows)
    assert_same(loaded.search(probes[:40], 5, fetch), ann.search(probes[:40], 5, fetch))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path, manifest: manifest.update(format="somebody-else/9"), "format"),
        (lambda path, manifest: manifest.update(people=manifest["people"] + 1), "people"),
        (lambda path, manifest: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "unreadable"),
        (lambda path, manifest: path.write_bytes(b"not an index at all"), "unreadable"),
    ],
)
def test_a_foreign_or_damaged_index_file_is_refused(structured, tmp_path: Path, damage, message: str) -> None:
    rows, _, _ = structured
    _, ann = both(rows[:50], "centroid")
    path = tmp_path / "i.npz"
    manifest = ann.save(path)
    assert manifest["format"] == FORMAT
    damage(path, manifest)
    with pytest.raises(ValueError, match=message):
        AnnIndex.load(path, manifest, "centroid", AnnParameters(), 0)

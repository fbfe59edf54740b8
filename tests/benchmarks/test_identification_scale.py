"""benchmarks/identification_scale.py: the NIST FRVT 1:N metrics and the protocol's split (unit)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import identification_scale as ids  # noqa: E402

# Ten non-mated top-1 similarities, distinct, and five mated searches (one with a wrong person first).
NONMATED = np.array([0.10, 0.12, 0.15, 0.18, 0.20, 0.22, 0.25, 0.28, 0.31, 0.40])
MATED = np.array([0.90, 0.60, 0.35, 0.29, 0.50])
HIT = np.array([True, True, True, True, False])


def test_fpir_counts_scores_at_or_above_the_threshold() -> None:
    assert ids.fpir_at(NONMATED, 0.31) == pytest.approx(0.2)
    assert ids.fpir_at(NONMATED, 0.311) == pytest.approx(0.1)


def test_fnir_counts_a_wrong_person_first_as_a_miss_at_every_threshold() -> None:
    assert ids.fnir_at(MATED, HIT, -1.0) == pytest.approx(0.2)
    assert ids.fnir_at(MATED, HIT, 0.30) == pytest.approx(0.4)  # + the own identity at 0.29


def test_rank1_rate_ignores_similarity() -> None:
    assert ids.rank1_rate(HIT) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("fpir", "expected_threshold", "expected_fnir"),
    [
        (0.1, 0.31, 0.4),  # one false positive allowed: just above the 2nd highest; the mated 0.29 misses
        (0.2, 0.28, 0.2),  # two allowed: the mated 0.29 passes
        (0.15, 0.31, 0.4),  # 1.5 false positives round down to one
        (0.05, 0.40, 0.6),  # below 1/10: just above the highest, nobody non-mated passes, nor the mated 0.35
        (0.001, 0.40, 0.6),
    ],
)
def test_fnir_at_fpir_takes_the_lowest_threshold_that_keeps_fpir_at_or_below_the_target(
    fpir: float, expected_threshold: float, expected_fnir: float
) -> None:
    fnir, threshold = ids.fnir_at_fpir(MATED, HIT, NONMATED, fpir)
    assert threshold == pytest.approx(expected_threshold)
    assert threshold > expected_threshold  # strictly above: that score is rejected
    assert ids.fpir_at(NONMATED, threshold) <= fpir
    assert fnir == pytest.approx(expected_fnir)


def test_tied_nonmated_scores_are_not_split_so_fpir_falls_below_the_target() -> None:
    nonmated = np.array([0.5, 0.5, 0.3, 0.2])
    mated, hit = np.array([0.5, 0.9]), np.array([True, True])
    fnir, threshold = ids.fnir_at_fpir(mated, hit, nonmated, 0.25)  # one false positive allowed, two tie
    assert ids.fpir_at(nonmated, threshold) == 0
    assert fnir == pytest.approx(0.5)  # the mated search tied at 0.5 is rejected with them


def test_all_hits_above_every_nonmated_score_give_no_misses() -> None:
    mated, hit = np.array([0.7, 0.8, 0.9]), np.ones(3, bool)
    for fpir in (0.01, 0.001, 0.5):
        assert ids.fnir_at_fpir(mated, hit, NONMATED, fpir)[0] == 0


def test_no_nonmated_search_above_the_threshold_gives_fpir_zero() -> None:
    assert ids.fpir_at(NONMATED, 0.5) == 0


def test_fpir_of_one_or_more_accepts_every_search() -> None:
    fnir, threshold = ids.fnir_at_fpir(MATED, HIT, NONMATED, 1.0)
    assert ids.fpir_at(NONMATED, threshold) == 1
    assert fnir == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("num_nonmated", "fpir", "resolved"),
    [(10, 0.1, True), (10, 0.05, False), (1000, 0.001, True), (999, 0.001, False), (100, 0.01, True), (0, 0.5, False)],
)
def test_fpir_is_resolved_only_when_one_false_positive_is_allowed(num_nonmated: int, fpir: float,
                                                                 resolved: bool) -> None:
    assert ids.fpir_resolved(num_nonmated, fpir) is resolved


def test_without_searches_the_metrics_are_nan() -> None:
    assert np.isnan(ids.fpir_at(np.array([]), 0.3))
    assert np.isnan(ids.fnir_at(np.array([]), np.array([], bool), 0.3))
    assert np.isnan(ids.rank1_rate(np.array([], bool)))
    assert all(np.isnan(ids.fnir_at_fpir(MATED, HIT, np.array([]), 0.01)))


def test_det_curve_agrees_with_fpir_and_fnir_at_each_threshold() -> None:
    fpir, fnir, thresholds = ids.det_curve(MATED, HIT, NONMATED)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(fpir) <= 0) and np.all(np.diff(fnir) >= 0)
    for f, n, t in zip(fpir, fnir, thresholds, strict=True):
        assert f == pytest.approx(ids.fpir_at(NONMATED, t))
        assert n == pytest.approx(ids.fnir_at(MATED, HIT, t))
    assert fpir[0] == 1 and fpir[-1] == 0
    assert fnir[0] == pytest.approx(0.2) and fnir[-1] == 1


def test_det_curve_refuses_an_empty_set() -> None:
    with pytest.raises(ValueError):
        ids.det_curve(MATED, HIT, np.array([]))


def names_of(photos_per_person: dict[str, int]) -> np.ndarray:
    return np.array([f"{p}/{p}_{i:04d}.jpg" for p, n in sorted(photos_per_person.items()) for i in range(1, n + 1)])


def test_split_holds_out_a_third_of_each_kind_of_person_and_nothing_overlaps() -> None:
    people = {f"single_{i:02d}": 1 for i in range(30)} | {f"several_{i:02d}": 3 for i in range(12)}
    names = names_of(people)
    split = ids.split_people(names, np.ones(len(names), bool), seed=0)
    assert sum(p.startswith("single") for p in split.held_out) == 10
    assert sum(p.startswith("several") for p in split.held_out) == 4
    assert not set(split.held_out) & set(split.pool)
    assert set(split.held_out) | set(split.pool) == set(people)


def test_split_is_reproducible_and_a_person_keeps_their_side_when_another_is_missing() -> None:
    people = {f"person_{i:02d}": 1 + i % 3 for i in range(60)}
    names = names_of(people)
    first = ids.split_people(names, np.ones(len(names), bool), seed=7)
    assert first == ids.split_people(names, np.ones(len(names), bool), seed=7)
    assert first != ids.split_people(names, np.ones(len(names), bool), seed=8)
    fewer = names_of({p: n for p, n in people.items() if p != first.pool[0]})
    second = ids.split_people(fewer, np.ones(len(fewer), bool), seed=7)
    assert second.pool[:10] == first.pool[1:11]


def test_photos_without_a_face_are_left_out_and_the_first_usable_one_enrolls() -> None:
    names = names_of({"a": 3, "b": 1})
    has_face = np.array([False, True, True, False])  # a_0001 and b_0001 have no face
    split = ids.split_people(names, has_face, seed=0)
    assert split.photos == {"a": [1, 2]}


def test_sizes_above_the_pool_are_skipped_and_all_is_the_pool() -> None:
    sizes, notes = ids.gallery_sizes(["100", "1000", "all"], 642)
    assert sizes == [100, 642]
    assert len(notes) == 1 and "1,000" in notes[0]
    assert ids.gallery_sizes(["100", "all"], 100)[0] == [100]


def test_largest_difference_compares_exact_and_ann_rows_of_the_same_size_in_points() -> None:
    def row(index: str, size: int, rank1: float) -> ids.Row:
        return ids.Row("f", index, "centroid", size, 10, 10, rank1, 0.1, 0.3, 0.1, 0.4, False, 0.3, 0.01, 0.1)

    rows = [row("exact", 100, 0.99), row("ann", 100, 0.985), row("exact", 600, 0.9), row("ann", 600, 0.9)]
    assert ids.largest_difference(rows) == pytest.approx(0.5)
    assert ids.largest_difference(rows[::2]) is None


def test_exact_index_runs_end_to_end_on_a_tiny_gallery(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    people = {f"p{i}": 2 for i in range(6)}
    names = names_of(people)
    centres = rng.normal(size=(6, 512))
    embeddings = np.repeat(centres, 2, axis=0) + 0.1 * rng.normal(size=(12, 512))
    split = ids.split_people(names, np.ones(len(names), bool), seed=0)
    row, (mated, hit, nonmated) = ids.measure("f", "exact", "centroid", len(split.pool), split,
                                             embeddings.astype(np.float32), 0.3)
    assert (row.gallery_size, row.mated, row.nonmated) == (4, 4, 4)
    assert row.rank1 == 1 and row.fnir_at_default == 0 and row.fpir_at_default == 0
    assert hit.all() and mated.min() > nonmated.max()

"""benchmarks/accuracy.py: pair formats and metrics (unit), and its numbers against the live API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import accuracy  # noqa: E402


def test_read_pairs_reads_tsv_with_header_and_folds(tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.tsv"
    pairs_file.write_text("path_a\tpath_b\tsame\tfold\na/1.jpg\ta/2.jpg\t1\t0\na/1.jpg\tb/1.jpg\t0\t1\n")
    pairs = accuracy.read_pairs(pairs_file, tmp_path)
    assert [(p.path_a.name, p.path_b.name, p.same, p.fold) for p in pairs] == [
        ("1.jpg", "2.jpg", True, 0),
        ("1.jpg", "1.jpg", False, 1),
    ]


def test_read_pairs_reads_lfw_pairs_txt(tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("2\t1\nAl_Gore\t1\t3\nAl_Gore\t2\tBo_Derek\t1\nCy_Young\t1\t2\nCy_Young\t2\tDi_Ane\t4\n")
    pairs = accuracy.read_pairs(pairs_file, tmp_path)
    assert pairs[0].path_b == tmp_path / "Al_Gore" / "Al_Gore_0003.jpg" and pairs[0].same
    assert pairs[1].path_b == tmp_path / "Bo_Derek" / "Bo_Derek_0001.jpg" and not pairs[1].same
    assert [p.fold for p in pairs] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("similarities", "same", "accuracy_expected", "threshold_range"),
    [
        ([0.9, 0.8, 0.1, 0.0], [1, 1, 0, 0], 1.0, (0.1, 0.8)),  # separable
        ([0.9, 0.2, 0.3, 0.0], [1, 1, 0, 0], 0.75, (0.0, 0.9)),  # one same pair below a different one
        ([0.5, 0.5], [1, 0], 0.5, (-1, 1)),  # ties cannot be split
    ],
)
def test_best_threshold_table(similarities, same, accuracy_expected, threshold_range) -> None:
    threshold, best = accuracy.best_threshold(np.array(similarities), np.array(same, bool))
    assert best == pytest.approx(accuracy_expected)
    assert threshold_range[0] <= threshold <= threshold_range[1]


def test_evaluate_on_a_perfect_separation() -> None:
    sims = np.array([0.9, 0.8, 0.7, 0.1, 0.05, 0.0])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    report = accuracy.evaluate(sims, same, np.array([0, 1, 2, 0, 1, 2]), 0.5)
    assert report["best_accuracy"] == 1.0 and report["roc_auc"] == pytest.approx(1.0)
    assert report["tar_at_far_1e-3"] == 1.0 and report["accuracy_at_configured_threshold"] == 1.0
    assert report["cv_accuracy_mean"] == 1.0


def test_tar_at_far_reads_the_roc() -> None:
    sims = np.array([0.9, 0.6, 0.5, 0.4])
    same = np.array([1, 0, 1, 0], bool)
    far, tar, _ = accuracy.roc(sims, same)
    assert accuracy.tar_at_far(far, tar, 0.0) == 0.5  # only the 0.9 pair is accepted without a false accept
    assert accuracy.tar_at_far(far, tar, 0.5) == 1.0


@pytest.mark.integration
def test_accuracy_tool_matches_an_independent_computation(api: httpx.Client, lfw_dir: Path, tmp_path: Path) -> None:
    rows = [r.split("\t") for r in (lfw_dir / "pairs.tsv").read_text().splitlines()[1:]]
    rows = rows[100:120] + rows[-120:-100]  # 20 same, 20 different
    pairs_file = tmp_path / "pairs.tsv"
    pairs_file.write_text("".join("\t".join(r) + "\n" for r in rows))
    root = lfw_dir / "original"
    out = tmp_path / "report.json"
    base_url = str(api.base_url).rstrip("/")
    assert accuracy.main(["--pairs", str(pairs_file), "--root", str(root), "--url", base_url, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 1000

    sims, same, threshold = [], [], None
    for a, b, label in rows:
        body = api.post(
            "/face-similarity",
            files={"image_a": ("a.jpg", (root / a).read_bytes()), "image_b": ("b.jpg", (root / b).read_bytes())},
        ).json()
        sims.append(body["similarity"])
        same.append(label == "1")
        threshold = body["threshold"]
    sims, same = np.array(sims), np.array(same)
    at_threshold = float(np.mean((sims >= threshold) == same))
    best = max(np.mean((sims >= t) == same) for t in np.r_[sims, sims + 1e-6])
    assert report["pairs"] == 40
    assert report["accuracy_at_configured_threshold"] == pytest.approx(at_threshold)
    assert report["best_accuracy"] == pytest.approx(best)
    assert [p["similarity"] for p in report["similarities"]] == pytest.approx(list(sims), abs=1e-6)

"""Do the enrollment checks refuse the photos that cause recognition errors? (ISO/IEC 29794-1)

    python benchmarks/quality_reject_curve.py [--url http://127.0.0.1:3000] [--lfw DIR]
        [--faces benchmarks/out/lfw_faces.npz] [--plot docs/quality-reject-curve.png]

Step 1 (service running, `make run`; skipped when --faces exists, unless --remeasure): every
LFW dev-test photo of both folders, as it is, blurred (sigma 3) and shrunk 4x, goes through
`/embedding` (`enroll_quality.measure_all`): the main face's landmarks, embedding and crop
sharpness are stored in --faces.

Step 2 (offline, from --faces): the quality of every photo by `quality.face_quality_from`
with the current code and Settings, then for each check (size, sharpness, yaw, pitch, roll) an
error-versus-reject curve: FNMR at Settings.similarity_threshold over the same-person pairs
left after refusing the photos the check flags (a pair goes when either photo is refused),
against the fraction of photos refused. Refusing photos at random leaves the expected FNMR
where it was; a check earns its keep where its curve falls below that line. Prints a table
for the configured limits (with the chance of doing at least as well by refusing as many
photos at random) and the curves, and draws them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import read_pairs  # noqa: E402
from enroll_quality import FOLDERS, VARIANTS, faces_argument, limits_of, read_faces  # noqa: E402

from settings import Settings  # noqa: E402
from vision.quality import FaceQuality, face_quality_from, quality_problem  # noqa: E402


# --------------------------------------------------------------------------- the curves
@dataclass(frozen=True)
class Check:
    """One enrollment check as a per-photo badness (higher is worse) and its configured limit on it."""

    name: str
    badness: Callable[[dict[str, np.ndarray]], np.ndarray]
    limit: float | None  # refused where badness > limit; None: no check, curve only
    shown: str  # the limit as the README writes it


def checks(settings: Settings) -> list[Check]:
    return [
        Check("size", lambda q: -q["size"], -settings.enroll_min_face_size, f"≥ {settings.enroll_min_face_size:g} px"),
        Check("sharpness", lambda q: -q["sharpness"], -settings.enroll_min_sharpness,
              f"≥ {settings.enroll_min_sharpness:g}"),
        Check("yaw", lambda q: np.abs(q["yaw"]), settings.enroll_max_yaw, f"±{settings.enroll_max_yaw:g}°"),
        Check("pitch", lambda q: np.abs(q["pitch"]), settings.enroll_max_pitch, f"±{settings.enroll_max_pitch:g}°"),
        Check("roll", lambda q: np.abs(q["roll"]), None, "not checked"),
    ]


def qualities(entry: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per photo: size, sharpness, yaw, pitch, roll (quality.face_quality_from); NaN without a face."""
    rows = [
        face_quality_from(points, float(sharp)).as_dict() if np.isfinite(points).all() else None
        for points, sharp in zip(entry["landmarks"], entry["sharpness"], strict=True)
    ]
    return {name: np.array([r[name] if r else np.nan for r in rows]) for name in FaceQuality.__dataclass_fields__}


@dataclass
class Population:
    """Photos (their qualities and embeddings) and the same-person pairs among them, as index pairs."""

    name: str
    quality: dict[str, np.ndarray]  # name -> (P,)
    similarity: np.ndarray  # (M,) cosine of each same-person pair
    pairs: np.ndarray  # (M, 2) photo indices
    has_face: np.ndarray  # (P,) bool

    @property
    def photos(self) -> int:
        return int(self.has_face.sum())

    def fnmr(self, refused: np.ndarray, threshold: float) -> tuple[float, int, int]:
        """(FNMR, false non-matches, pairs kept) over the pairs with neither photo refused (nor faceless)."""
        out = refused | ~self.has_face
        keep = ~(out[self.pairs[:, 0]] | out[self.pairs[:, 1]])
        errors = int((self.similarity[keep] < threshold).sum())
        kept = int(keep.sum())
        return errors / max(kept, 1), errors, kept


def population(name: str, entries: list[dict[str, np.ndarray]], pairs: list[tuple[int, int]]) -> Population:
    """entries: measured photo sets stacked in order; pairs index into the stack."""
    quality = [qualities(e) for e in entries]
    stacked = {k: np.concatenate([q[k] for q in quality]) for k in quality[0]}
    embeddings = np.concatenate([e["embedding"] for e in entries])
    index = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    has_face = np.isfinite(stacked["size"])
    similarity = np.nan_to_num(np.einsum("ij,ij->i", embeddings[index[:, 0]], embeddings[index[:, 1]]), nan=-1.0)
    return Population(name, stacked, similarity, index, has_face)


def same_person_pairs(names: np.ndarray, lfw: Path, every: bool) -> list[tuple[int, int]]:
    """Index pairs of same-person photos: pairs.tsv's 500 (every=False) or all combinations."""
    position = {str(n): i for i, n in enumerate(names)}
    if every:
        people: dict[str, list[int]] = {}
        for name, i in position.items():
            people.setdefault(name.split("/")[0], []).append(i)
        return [(a, b) for photos in people.values() for a, b in combinations(sorted(photos), 2)]
    pairs = read_pairs(lfw / "pairs.tsv", lfw)
    found = [(str(p.path_a.relative_to(lfw)), str(p.path_b.relative_to(lfw))) for p in pairs if p.same]
    return [(position[a], position[b]) for a, b in found if a in position and b in position]


def populations(faces: dict, lfw: Path) -> list[Population]:
    """Per folder and pair set: the photos as they are, then with their blurred, then their shrunk
    copies added (each pair once more per photo degraded, against the other as it is)."""
    out = []
    for folder in FOLDERS:
        for every in (False, True):
            label = f"{folder}, {'all same-person pairs' if every else 'pairs.tsv'}"
            as_is = faces[(folder, VARIANTS[0])]
            pairs = same_person_pairs(as_is["names"], lfw, every)
            out.append(population(f"{label}, as is", [as_is], pairs))
            shift = len(as_is["names"])
            for kind in VARIANTS[1:]:
                mixed = pairs + [(a, b + shift) for a, b in pairs] + [(b, a + shift) for a, b in pairs]
                out.append(population(f"{label}, with {kind} copies", [as_is, faces[(folder, kind)]], mixed))
    return out


def chance(pop: Population, refused_count: int, threshold: float, draws: int, rng: np.random.Generator) -> np.ndarray:
    """FNMR after refusing `refused_count` photos (with a face) at random, `draws` times."""
    faces = np.flatnonzero(pop.has_face)
    out = np.empty(draws)
    for d in range(draws):
        refused = np.zeros(pop.has_face.size, bool)
        refused[rng.choice(faces, refused_count, replace=False)] = True
        out[d] = pop.fnmr(refused, threshold)[0]
    return out


def at_limits(pop: Population, settings: Settings, draws: int, seed: int = 0) -> list[dict]:
    """One row per check (and all together) at the configured limits."""
    threshold = settings.similarity_threshold
    rng = np.random.default_rng(seed)
    limits = limits_of(settings)
    base, base_errors, base_kept = pop.fnmr(np.zeros(pop.has_face.size, bool), threshold)
    masks = {c.name: c.badness(pop.quality) > c.limit for c in checks(settings) if c.limit is not None}
    names = list(pop.quality)
    masks["all checks"] = np.array([
        bool(ok) and quality_problem(FaceQuality(**{n: pop.quality[n][i] for n in names}), limits) is not None
        for i, ok in enumerate(pop.has_face)
    ])
    rows = []
    for name, refused in masks.items():
        refused = refused & pop.has_face
        fnmr, errors, kept = pop.fnmr(refused, threshold)
        count = int(refused.sum())
        random = chance(pop, count, threshold, draws, rng) if count else np.full(1, base)
        rows.append({
            "check": name, "photos": pop.photos, "refused": count, "refused_pct": 100 * count / max(pop.photos, 1),
            "pairs": base_kept, "pairs_kept": kept, "fnm_before": base_errors, "fnm_after": errors,
            "fnmr_before_pct": 100 * base, "fnmr_after_pct": 100 * fnmr,
            "fnmr_random_pct": 100 * float(random.mean()),
            # how often refusing as many photos at random does at least as well
            "p_random_as_good": float((random <= fnmr + 1e-12).mean()),
        })
    return rows


def curve(pop: Population, badness: np.ndarray, threshold: float, max_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of photos refused, FNMR) as the check's limit tightens from nothing refused."""
    values = np.where(pop.has_face, badness, -np.inf)
    order = np.sort(values[pop.has_face])[::-1]
    steps = np.unique(np.linspace(0, int(max_fraction * order.size), 60).astype(int))
    fractions, rates = [], []
    for k in steps:
        refused = values >= order[k - 1] if k else np.zeros(values.size, bool)
        fractions.append(refused.sum() / order.size)
        rates.append(pop.fnmr(refused, threshold)[0])
    return np.array(fractions), np.array(rates)


def plot(pops: list[Population], settings: Settings, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=100)
    threshold = settings.similarity_threshold
    colours = {"size": "tab:blue", "sharpness": "tab:orange", "yaw": "tab:green", "pitch": "tab:red",
               "roll": "tab:purple"}
    rng = np.random.default_rng(1)
    for ax, pop in zip(axes.ravel(), pops, strict=True):
        mixed = "copies" in pop.name
        top = 0.6 if mixed else 0.05
        base = pop.fnmr(np.zeros(pop.has_face.size, bool), threshold)[0]
        grid = np.linspace(0, top, 16)
        band = np.array([np.percentile(chance(pop, int(f * pop.photos), threshold, 200, rng), [5, 95]) for f in grid])
        ax.fill_between(100 * grid, 100 * band[:, 0], 100 * band[:, 1], color="grey", alpha=0.2,
                        label="refused at random (90 %)")
        ax.axhline(100 * base, color="grey", ls="--", lw=1, label="refused at random (expected)")
        for check in checks(settings):
            badness = check.badness(pop.quality)
            x, y = curve(pop, badness, threshold, top)
            ax.plot(100 * x, 100 * y, color=colours[check.name], label=check.name)
            if check.limit is not None:
                refused = (badness > check.limit) & pop.has_face
                fx = refused.sum() / pop.photos
                if fx <= top:
                    ax.scatter([100 * fx], [100 * pop.fnmr(refused, threshold)[0]], color=colours[check.name],
                               edgecolor="black", zorder=3, s=36)
        ax.set_xlim(0, 100 * top)
        ax.set_ylim(bottom=0)
        ax.set_title(pop.name.replace(", with", ",\nwith").replace(", as is", ",\nas is"), fontsize=9)
        ax.set_xlabel("photos refused (%)")
        ax.set_ylabel(f"FNMR at similarity {threshold:g} (%)")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Error versus reject (ISO/IEC 29794-1) of the enrollment checks on LFW dev-test; "
                 "dots: the default limits", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def print_table(pop: Population, rows: list[dict]) -> None:
    print(f"\n{pop.name}: {pop.photos} photos with a face, {rows[0]['pairs']} same-person pairs, "
          f"FNMR {rows[0]['fnmr_before_pct']:.2f} % ({rows[0]['fnm_before']} errors)")
    print(f"  {'check':<11}{'refused':>16}{'pairs kept':>12}{'errors':>9}{'FNMR %':>9}{'random %':>10}{'p':>7}")
    for r in rows:
        print(f"  {r['check']:<11}{r['refused']:>7} ({r['refused_pct']:5.2f} %){r['pairs_kept']:>12}"
              f"{r['fnm_after']:>9}{r['fnmr_after_pct']:>9.2f}{r['fnmr_random_pct']:>10.2f}{r['p_random_as_good']:>7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    faces_argument(parser)
    parser.add_argument("--plot", type=Path, default=Path("docs/quality-reject-curve.png"))
    parser.add_argument("--draws", type=int, default=2000, help="random refusals per row, for p")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/quality_reject_curve.json"))
    args = parser.parse_args(argv)
    settings = Settings()
    pops = populations(read_faces(args), args.lfw)
    report = {}
    for pop in pops:
        rows = at_limits(pop, settings, args.draws)
        print_table(pop, rows)
        report[pop.name] = rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        shown = [p for p in pops if "pairs.tsv" in p.name]
        plot(shown, settings, args.plot)
        print(f"\nwrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

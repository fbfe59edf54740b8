"""gallery/live_index.py on a real SQLite gallery: which index, catching up, the saved file, rebuilds."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from gallery import backup
from gallery.ann import AnnParameters
from gallery.live_index import MANIFEST, IndexConfig
from gallery.sqlite import SqliteGallery, index_folder

sys.path.insert(0, str(ROOT / "benchmarks"))
import synthetic  # noqa: E402

PEOPLE, PER_PERSON = 400, 3


@pytest.fixture(scope="module")
def people() -> tuple[list[tuple[str, dict, np.ndarray]], np.ndarray]:
    """400 people x 3 structured samples, and one new sample of each (the probes)."""
    centres, samples, owners = synthetic.gallery(PEOPLE, PER_PERSON, seed=11)
    enrolled = [(f"person {p}", {}, samples[owners == p]) for p in range(PEOPLE)]
    return enrolled, synthetic.samples_around(centres, seed=12)


@pytest.fixture()
def index_log(caplog: pytest.LogCaptureFixture):
    """What the index logs (the service's logger does not propagate: its records are caught directly)."""
    logger = logging.getLogger("frtriton")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


def config(mode: str, **changes) -> IndexConfig:
    settings = {"ann_min_faces": 10**9, "parameters": AnnParameters(candidates=32), "save_interval_s": 0} | changes
    return IndexConfig(mode=mode, **settings)


def opened(path: Path, mode: str, scoring: str = "centroid", **changes) -> SqliteGallery:
    gallery = SqliteGallery(path, scoring, config(mode, **changes))
    gallery.prepare()
    return gallery


def answers(gallery: SqliteGallery, probes: np.ndarray, top_k: int = 3) -> list[list[tuple[str, float]]]:
    return [[(m.name, round(m.similarity, 4)) for m in row] for row in gallery.search(probes, top_k)]


def identity_named(gallery: SqliteGallery, name: str) -> str:
    return next(i.id for i in gallery.list(1000, 0)[1] if i.name == name)


def saved_file(folder: Path) -> Path:
    """The index file the manifest names."""
    return folder / json.loads((folder / MANIFEST).read_text())["file"]


def saved(path: Path, chosen: list) -> None:
    """A gallery at `path` with `chosen` enrolled and its approximate index built and saved."""
    gallery = opened(path, "ann")
    gallery.create_many(chosen)
    wait_for_build(gallery)
    gallery.close()


def wait_for_build(gallery: SqliteGallery) -> None:
    gallery.index.sync()  # writes are caught up with lazily, at the next search
    builder = gallery.index._builder
    if builder is not None:
        builder.join(60)
    gallery.index.sync()


@pytest.mark.parametrize("scoring", ["centroid", "best_sample"])
def test_the_approximate_index_answers_what_exact_search_answers_through_every_change(
    tmp_path: Path, people, scoring: str
) -> None:
    enrolled, probes = people
    path = tmp_path / "g.db"
    ann = opened(path, "ann", scoring, parameters=AnnParameters(512, 512))  # everyone: exact
    made = ann.create_many(enrolled[:300])
    wait_for_build(ann)
    assert ann.index.current.kind == "ann"
    ann.create("late", {}, enrolled[300][2])
    ann.add_faces(made[1].id, probes[1:2])
    ann.merge(made[2].id, made[3].id)
    ann.update(made[4].id, "renamed", None)
    ann.delete(made[5].id)
    exact = opened(path, "exact", scoring)
    queries = probes[:310]
    assert answers(ann, queries) == answers(exact, queries)
    assert "person 5" not in {m.name for row in ann.search(probes[5:6], 300) for m in row}
    ann.close()
    exact.close()


def test_auto_switches_to_the_approximate_index_past_its_size(tmp_path: Path, people) -> None:
    enrolled, probes = people
    gallery = opened(tmp_path / "g.db", "auto", ann_min_faces=300)
    gallery.create_many(enrolled[:50])
    assert gallery.index.sync().kind == "exact"
    gallery.create_many(enrolled[50:150])  # 450 samples
    wait_for_build(gallery)
    assert gallery.index.current.kind == "ann"
    assert [row[0].name for row in gallery.search(probes[:150], 1)] == [f"person {p}" for p in range(150)]
    gallery.close()


def test_the_saved_index_is_loaded_at_start_and_caught_up_with_later_writes(tmp_path: Path, people) -> None:
    enrolled, probes = people
    path = tmp_path / "g.db"
    saved(path, enrolled[:200])
    manifest = json.loads((index_folder(path) / MANIFEST).read_text())
    writer = opened(path, "exact")  # another process: writes after the index was saved
    writer.create_many(enrolled[200:210])
    writer.delete(identity_named(writer, "person 0"))
    writer.close()
    reopened = opened(path, "ann")
    assert reopened.index.loaded_from_file and reopened.index.current.kind == "ann"
    assert reopened.index.current.generation > manifest["generation"]
    names = [row[0].name for row in reopened.search(probes[:210], 1)]
    assert names[1:] == [f"person {p}" for p in range(1, 210)] and names[0] != "person 0"
    reopened.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder: saved_file(folder).write_bytes(b"\0" * 100),
        lambda folder: (folder / MANIFEST).write_text("{not json"),
        lambda folder: saved_file(folder).unlink(),
    ],
    ids=["corrupt file", "corrupt manifest", "missing file"],
)
def test_a_damaged_saved_index_is_ignored_and_rebuilt_and_nothing_stored_is_lost(
    tmp_path: Path, people, damage, index_log: pytest.LogCaptureFixture
) -> None:
    enrolled, probes = people
    path = tmp_path / "g.db"
    saved(path, enrolled[:100])
    damage(index_folder(path))
    reopened = opened(path, "ann")
    assert "ignoring the saved index" in index_log.text
    assert not reopened.index.loaded_from_file
    assert reopened.list(1000, 0)[0] == 100 and reopened.face_count() == 300
    wait_for_build(reopened)
    assert reopened.index.current.kind == "ann"
    assert [row[0].name for row in reopened.search(probes[:100], 1)] == [f"person {p}" for p in range(100)]
    reopened.close()


def test_another_gallerys_index_is_foreign_and_ignored(tmp_path: Path, people, index_log) -> None:
    enrolled, probes = people
    one, other = tmp_path / "one.db", tmp_path / "other.db"
    saved(one, enrolled[:50])
    saved(other, enrolled[50:100])
    for source in index_folder(other).iterdir():  # other's index copied over one's
        (index_folder(one) / source.name).write_bytes(source.read_bytes())
    reopened = opened(one, "ann")
    assert "another gallery" in index_log.text
    assert [row[0].name for row in reopened.search(probes[:50], 1)] == [f"person {p}" for p in range(50)]
    reopened.close()


def test_an_index_saved_before_a_wipe_is_not_used_after_it(tmp_path: Path, people) -> None:
    enrolled, probes = people
    path = tmp_path / "g.db"
    first = opened(path, "ann")
    first.create_many(enrolled[:100])
    wait_for_build(first)
    first.index.close()  # saved at this generation
    saved = (index_folder(path) / MANIFEST).read_text()
    first.delete_all()
    first.create_many(enrolled[100:110])
    assert [row[0].name for row in first.search(probes[100:110], 1)] == [f"person {p}" for p in range(100, 110)]
    first.close()
    (index_folder(path) / MANIFEST).write_text(saved)  # as if the process died before saving again
    reopened = opened(path, "ann")
    assert not reopened.index.loaded_from_file
    assert reopened.index.current.people_count() == 10
    reopened.close()


def test_a_second_process_sees_the_first_ones_enrollments_in_its_approximate_index(tmp_path: Path, people) -> None:
    enrolled, probes = people
    path = tmp_path / "g.db"
    one, two = opened(path, "ann"), opened(path, "ann")
    one.create_many(enrolled[:20])
    assert [row[0].name for row in two.search(probes[:20], 1)] == [f"person {p}" for p in range(20)]
    two.delete(identity_named(two, "person 0"))
    assert one.search(probes[:1], 1)[0][0].name != "person 0"
    one.close()
    two.close()


def test_a_restored_backup_is_a_new_lineage_and_the_index_rebuilds(tmp_path: Path, people) -> None:
    enrolled, probes = people
    path, saved = tmp_path / "g.db", tmp_path / "backup.db"
    live = opened(path, "ann")
    live.create_many(enrolled[:30])
    backup.backup(path, saved)
    live.delete_all()
    live.create_many(enrolled[30:40])
    assert live.search(probes[:1], 1)[0][0].name != "person 0"
    backup.restore(saved, path)  # while this gallery is open, as under a running API
    assert [row[0].name for row in live.search(probes[:30], 1)] == [f"person {p}" for p in range(30)]
    assert live.index.current.people_count() == 30
    live.close()

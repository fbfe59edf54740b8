"""Keeps a gallery's search index in step with its database: which index, when to build, what to trust.

The database is the source of truth. Every write bumps its *generation* and records which
people it touched (`Source.changes`); an index remembers the generation it reflects, and is
brought up to date by re-reading just the people changed since (their rows as they are now),
whether this process or another one (a replica on the same SQLite file) made the change.
Anything an index cannot catch up with (a wiped gallery, a restored backup, another
database's index) makes it rebuild from every row.

Which index (`GALLERY_INDEX`): `exact` always searches every stored sample (`gallery.index`);
`ann` the sign codes of `gallery.ann` at any size; `auto` exact below `GALLERY_ANN_MIN_FACES`
samples, codes from there on. The approximate index is saved beside the database (a folder
with a manifest naming the file and the generation it holds) and loaded at start, then
caught up; a missing, unreadable, foreign or pre-wipe file is ignored with a log line and the
index rebuilt, while the exact index answers. Saving happens in the background, from a copy.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gallery.ann import LIBRARY, AnnIndex, AnnParameters
from gallery.index import FaceIndex, PersonRows
from gallery.store import Match

log = logging.getLogger("frtriton")
INDEX_MODES = ("auto", "exact", "ann")
MANIFEST = "manifest.json"
STALE_FILE_AGE_S = 60  # index files no manifest names are deleted once this old (another process may be reading)


@dataclass(frozen=True)
class Stamp:
    """Where a database stands: which lineage (`epoch`, new for a restored backup), how many writes,
    and the generation of its last wipe (an index older than that cannot catch up)."""

    epoch: str
    generation: int
    reset: int


class Source(Protocol):
    """What the index needs from its database (gallery.sqlite implements it)."""

    def stamp(self) -> Stamp: ...
    def changes(self, since: int) -> tuple[Stamp, list[PersonRows]]:
        """Every person changed after generation `since`, with their rows now (none: gone), in one snapshot."""
    def everyone(self) -> tuple[Stamp, FaceIndex]:
        """An exact index of every stored sample, read in one snapshot."""
    def fetch(self, identity_ids: list[str]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class IndexConfig:
    mode: str = "auto"
    ann_min_faces: int = 50_000
    parameters: AnnParameters = AnnParameters()
    folder: Path | None = None  # where the approximate index is saved; None: never saved
    save_interval_s: float = 300.0


class LiveIndex:
    """The current index of one gallery; every call holds the gallery's lock."""

    def __init__(self, source: Source, lock: threading.RLock, scoring: str, config: IndexConfig) -> None:
        if config.mode not in INDEX_MODES:
            raise ValueError(f"GALLERY_INDEX must be one of {INDEX_MODES}, not {config.mode!r}")
        self.source, self.lock, self.scoring, self.config = source, lock, scoring, config
        self.current: FaceIndex | AnnIndex | None = None
        self.epoch: str | None = None
        self.loaded_from_file = False  # the approximate index came from the saved file (not rebuilt)
        self._dirty = False
        self._last_save = time.monotonic()
        self._builder: threading.Thread | None = None
        self._saver: threading.Thread | None = None

    # ---- what callers use
    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]:
        with self.lock:
            index = self.sync()
            if isinstance(index, AnnIndex):
                return index.search(queries, top_k, self.source.fetch)
            return index.search(queries, top_k, self.scoring)

    def sync(self) -> FaceIndex | AnnIndex:
        """Bring the index up to the database's generation (after a write, before a search)."""
        with self.lock:
            if self.current is None:
                self._open()
            stamp = self.source.stamp()
            if self._behind_a_wipe(stamp, self.current.generation):
                log.info("gallery index: the database was wiped or restored; rebuilding from every row")
                self._rebuild_exact()
            elif stamp.generation != self.current.generation:
                stamp, changed = self.source.changes(self.current.generation)
                for rows in changed:
                    self.current.replace(*rows)
                self.current.generation = stamp.generation
                self._dirty = True
            self._start_build_if_wanted()
            self._save_if_due()
            return self.current

    def status(self) -> dict:
        with self.lock:
            index = self.current
            return {
                "index": None if index is None else index.kind,
                "library": LIBRARY if isinstance(index, AnnIndex) else "numpy",
                "generation": None if index is None else index.generation,
                "building": self._builder is not None and self._builder.is_alive(),
                "loaded_from_file": self.loaded_from_file,
            }

    def close(self) -> None:
        """Save what is not saved yet (waits for a running build or save)."""
        if self._builder is not None:
            self._builder.join()
        if self._saver is not None:  # read after the build ended: a finished build starts a save
            self._saver.join()
        with self.lock:
            if self._dirty and isinstance(self.current, AnnIndex):
                self._write(self.current.snapshot())

    # ---- opening and rebuilding
    def _behind_a_wipe(self, stamp: Stamp, generation: int) -> bool:
        return stamp.epoch != self.epoch or stamp.reset > generation or stamp.generation < generation

    def _open(self) -> None:
        stamp = self.source.stamp()
        self.epoch = stamp.epoch
        if self.config.mode != "exact" and self.config.folder is not None:
            self.current = self._load(stamp)
        if self.current is None:
            self._rebuild_exact()

    def _rebuild_exact(self) -> None:
        started = time.perf_counter()
        stamp, self.current = self.source.everyone()
        self.epoch, self._dirty, self.loaded_from_file = stamp.epoch, True, False
        log.info("gallery index: exact index of %d faces built in %.1f s", self.current.face_count(),
                 time.perf_counter() - started)

    def _wants_ann(self, index: FaceIndex | AnnIndex) -> bool:
        mode = self.config.mode
        return mode == "ann" or (mode == "auto" and index.face_count() >= self.config.ann_min_faces)

    def _start_build_if_wanted(self) -> None:
        if not isinstance(self.current, FaceIndex) or not self._wants_ann(self.current):
            return
        if self._builder is not None and self._builder.is_alive():
            return
        snapshot = self.current.snapshot()
        self._builder = threading.Thread(target=self._build, args=(snapshot,), name="gallery-index", daemon=True)
        self._builder.start()

    def _build(self, snapshot: FaceIndex) -> None:
        """Background: the approximate index of a snapshot, caught up and swapped in."""
        started = time.perf_counter()
        built = AnnIndex.from_exact(snapshot, self.scoring, self.config.parameters)
        with self.lock:
            stamp = self.source.stamp()
            if self._behind_a_wipe(stamp, built.generation):
                return  # wiped while building: the next sync starts over from the new exact index
            if stamp.generation != built.generation:
                stamp, changed = self.source.changes(built.generation)
                for rows in changed:
                    built.replace(*rows)
                built.generation = stamp.generation
            self.current, self._dirty = built, True
            log.info("gallery index: approximate index (%s) of %d people built in %.1f s", LIBRARY,
                     built.people_count(), time.perf_counter() - started)
            self._save_if_due(force=True)

    # ---- the saved index
    def _manifest(self) -> dict | None:
        path = self.config.folder / MANIFEST
        return json.loads(path.read_text()) if path.exists() else None

    def _load(self, stamp: Stamp) -> AnnIndex | None:
        try:
            manifest = self._manifest()
            if manifest is None:
                log.info("gallery index: no saved index in %s; building one", self.config.folder)
                return None
            if manifest.get("epoch") != stamp.epoch or manifest.get("scoring") != self.scoring:
                raise ValueError("it belongs to another gallery, or another scoring")
            generation = int(manifest["generation"])
            if not stamp.reset <= generation <= stamp.generation:
                raise ValueError(f"it holds generation {generation}, the database is at {stamp.generation}"
                                 f" (wiped at {stamp.reset})")
            index = AnnIndex.load(self.config.folder / manifest["file"], manifest, self.scoring,
                                  self.config.parameters, generation)
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("gallery index: ignoring the saved index in %s (%s); rebuilding", self.config.folder, error)
            return None
        self.loaded_from_file = True
        log.info("gallery index: loaded %d people at generation %d (database at %d)", index.people_count(),
                 index.generation, stamp.generation)
        return index

    def _save_if_due(self, force: bool = False) -> None:
        if self.config.folder is None or not self._dirty or not isinstance(self.current, AnnIndex):
            return
        if self._saver is not None and self._saver.is_alive():
            return
        if not force and time.monotonic() - self._last_save < self.config.save_interval_s:
            return
        snapshot = self.current.snapshot()
        self._dirty, self._last_save = False, time.monotonic()
        self._saver = threading.Thread(target=self._write, args=(snapshot,), name="gallery-index-save", daemon=True)
        self._saver.start()

    def _write(self, index: AnnIndex) -> None:
        """Write a snapshot and then, atomically, the manifest naming it; old files go."""
        folder = self.config.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"index-{index.generation}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
            partial = folder / (name + ".partial")
            entry = index.save(partial)
            _fsync_rename(partial, folder / name)
            entry.update(file=name, epoch=self.epoch, scoring=self.scoring, generation=index.generation)
            manifest = folder / (MANIFEST + f".{os.getpid()}.partial")
            manifest.write_text(json.dumps(entry))
            _fsync_rename(manifest, folder / MANIFEST)
            _remove_old_files(folder, keep=name)
        except OSError as error:
            self._dirty = True
            log.warning("gallery index: could not save the index in %s (%s); the database is unaffected", folder,
                        error)


def _fsync_rename(partial: Path, final: Path) -> None:
    with partial.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)


def _remove_old_files(folder: Path, keep: str, now: Callable[[], float] = time.time) -> None:
    for path in folder.glob("index-*"):
        if path.name != keep and now() - path.stat().st_mtime > STALE_FILE_AGE_S:
            path.unlink(missing_ok=True)

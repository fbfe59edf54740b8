"""The folder side of a bulk import (gallery.bulk_import): who is in it, their metadata, the report.

Pure file handling, no HTTP: one sub-folder per person (LFW layout), names from folder names,
the optional metadata CSV, request batches, and the CSV report of everything refused.
"""

from __future__ import annotations

import csv
import datetime as dt
import threading
from dataclasses import dataclass
from pathlib import Path

from settings import Settings

REPORT_COLUMNS = ["time", "folder", "file", "reason"]
MAX_BATCH_BYTES = Settings.model_fields["max_request_bytes"].default - (1 << 20)  # room for the multipart framing
MAX_NAME = 200  # the service's limit on a name
SOURCE_KEY = "import_folder"  # metadata: the sub-folder a person was imported from
PENDING_KEY = "import_pending"  # metadata: set until all of a person's requests are answered


class Fatal(Exception):
    """Stops the run with exit status 2: wrong key, service unreachable, unusable arguments."""


@dataclass(frozen=True)
class Person:
    folder: str  # the sub-folder's name
    name: str
    photos: tuple[Path, ...]
    metadata: dict[str, str]


# --------------------------------------------------------------------------- the folder (pure)
def person_name(folder: str) -> str:
    """The person a sub-folder holds: underscores read as spaces, runs of spaces as one, trimmed."""
    return " ".join(folder.replace("_", " ").split())


def read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """sub-folder name -> its metadata (every other column, as strings); ValueError when unusable."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        if "folder" not in columns:
            raise ValueError(f"{path}: no column 'folder' (columns: {', '.join(columns) or 'none'})")
        if reserved := {SOURCE_KEY, PENDING_KEY} & set(columns):
            raise ValueError(f"{path}: column {', '.join(sorted(reserved))} is the import's own metadata")
        found: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            if None in row:
                raise ValueError(f"{path}, line {line}: more cells than columns")
            folder = (row.pop("folder") or "").strip()
            if folder in found:
                raise ValueError(f"{path}, line {line}: folder {folder!r} appears twice")
            found[folder] = {key: value or "" for key, value in row.items()}
    return found


def scan(root: Path, metadata: dict[str, dict[str, str]]) -> tuple[list[Person], list[tuple[str, str, str]]]:
    """Every person of `root` (sorted by folder), and (folder, file, reason) of what cannot be imported.
    Hidden files (a leading dot) are ignored; every other file is sent: the service says what is no image."""
    people, problems = [], []
    for entry in sorted(e for e in root.iterdir() if not e.name.startswith(".")):
        if not entry.is_dir():
            problems.append(("", entry.name, "not in a person's sub-folder: ignored"))
            continue
        photos = []
        for item in sorted(i for i in entry.iterdir() if not i.name.startswith(".")):
            if item.is_file():
                photos.append(item)
            else:
                problems.append((entry.name, item.name, "not a file (a folder in a person's folder?): ignored"))
        name = person_name(entry.name)
        if not photos:
            problems.append((entry.name, "", "empty folder: no photos, nobody imported"))
        elif not name or len(name) > MAX_NAME:
            problems.append((entry.name, "", f"the folder gives no name of 1 to {MAX_NAME} characters: not imported"))
        else:
            people.append(Person(entry.name, name, tuple(photos), metadata.get(entry.name, {})))
    folders = {entry.name for entry in root.iterdir()}
    problems += [(f, "", "in the metadata CSV but no such sub-folder: ignored") for f in metadata if f not in folders]
    return people, problems


def duplicate_names(people: list[Person]) -> dict[str, list[str]]:
    """name -> its folders, for every name more than one sub-folder gives (e.g. `A_B` and `A B`)."""
    folders: dict[str, list[str]] = {}
    for person in people:
        folders.setdefault(person.name, []).append(person.folder)
    return {name: found for name, found in folders.items() if len(found) > 1}


def take_batch(photos: list[Path], limit: int, max_bytes: int = MAX_BATCH_BYTES) -> list[Path]:
    """The next request's photos, taken from the front of `photos`: at most `limit`, at most `max_bytes`
    in all unless a single photo is larger (it goes alone; the service refuses it)."""
    batch, size = [], 0
    while photos and len(batch) < limit:
        length = photos[0].stat().st_size if photos[0].exists() else 0  # a vanished file: unreadable later
        if batch and size + length > max_bytes:
            break
        batch.append(photos.pop(0))
        size += length
    return batch


# --------------------------------------------------------------------------- the report
class Report:
    """The CSV report, appended to (a resumed run keeps the earlier rows), one flushed row at a time."""

    def __init__(self, path: Path) -> None:
        fresh = not path.exists() or path.stat().st_size == 0
        if not fresh:
            with open(path, newline="", encoding="utf-8") as existing:
                if next(csv.reader(existing), None) != REPORT_COLUMNS:
                    raise ValueError(f"{path} exists and is not a bulk import report: not appending to it")
        self.path, self.rows, self.lock = path, 0, threading.Lock()
        self.file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self.writer = csv.writer(self.file)
        if fresh:
            self.writer.writerow(REPORT_COLUMNS)
            self.file.flush()

    def row(self, folder: str, file: str, reason: str) -> None:
        with self.lock:
            if not self.file.closed:  # else an abandoned request answered after the run ended
                self.writer.writerow([dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), folder, file, reason])
                self.file.flush()
                self.rows += 1

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *_: object) -> None:
        with self.lock:
            self.file.close()

"""Enroll a folder of photos, one sub-folder per person, through a running service's HTTP API.

    python -m gallery.bulk_import FOLDER [--url http://localhost:3000] [--api-key KEY]
        [--metadata people.csv] [--report bulk_import_report.csv] [--workers 4] [--batch 10]

FOLDER holds one sub-folder per person (LFW layout: `FOLDER/Ada_Lovelace/*.jpg`), its name with
underscores read as spaces the person's name. Each person is one `POST /identities` (the service's
models and quality checks, as any enrollment); photos beyond `--batch` go in `POST .../faces`.
Resumable from the gallery: each person's metadata gets `import_folder`, and a run skips every
(name, import_folder) `GET /identities` lists. A person needing several requests is marked
`import_pending` until the last is answered; a later run deletes such an entry and starts again.
Refused photos and folder problems are appended to the CSV report as they happen. Ctrl-C stops
sending and lets the requests in flight finish. Exit: 0 done, 2 usage / key / no service, 130 Ctrl-C.
Only HTTP: nothing of the service is used but the default limits in `settings`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

import httpx
from tqdm import tqdm

from gallery.bulk_folder import (
    PENDING_KEY,
    SOURCE_KEY,
    Fatal,
    Person,
    Report,
    duplicate_names,
    read_metadata,
    scan,
    take_batch,
)
from settings import Settings

DEFAULT_URL = "http://localhost:3000"
DEFAULT_REPORT = "bulk_import_report.csv"
KEY_ENV = "FRTRITON_API_KEY"
MAX_BATCH = Settings.model_fields["max_enroll_images"].default  # images per request (the service's default)
PAGE = 1000  # GET /identities' largest page
RETRIES = 5  # per request: 429/503 after their Retry-After, refused connections backing off 1, 2, 4... s
RETRY_AFTER_MAX_S = 60.0
TIMEOUT_S = 300.0
COUNTS = ["imported", "skipped", "not imported", "left off", "sent", "stored", "refused", "unreadable"]
EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class Stopped(Exception):
    """A person's import left off: Ctrl-C, or a request whose answer never came."""


def refusal_reasons(detail: object, count: int) -> list[str]:
    """Each photo's reason in a 422 `detail` ("no usable face in any image (image 0: ...; ...); ...")."""
    text = detail if isinstance(detail, str) else json.dumps(detail)
    found: dict[int, str] = {}
    if whole := re.fullmatch(r"no usable face in any image \((.*)\); nothing was stored", text, re.DOTALL):
        for part in re.split(r"; (?=image \d+: )", whole[1]):
            if match := re.match(r"image (\d+): (.*)", part, re.DOTALL):
                found[int(match[1])] = match[2]
    return [found.get(i, text) for i in range(count)]


def retry_after(response: httpx.Response, attempt: int) -> float:
    header = response.headers.get("Retry-After", "")
    seconds = float(header) if re.fullmatch(r"\d+(\.\d+)?", header) else 2.0**attempt
    return min(max(seconds, 0.1), RETRY_AFTER_MAX_S)


def detail_of(response: httpx.Response) -> object:
    try:
        return response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text[:300]


# --------------------------------------------------------------------------- the service
class Importer:
    """Imports people with worker threads sharing one httpx.Client; counts what happened."""

    def __init__(self, client: httpx.Client, report: Report, batch: int) -> None:
        self.client, self.report, self.batch = client, report, batch
        self.stop, self.lock = threading.Event(), threading.Lock()
        self.fatal: str | None = None
        self.counts = dict.fromkeys(COUNTS, 0)
        self.bar: tqdm | None = None
        self.people_total = self.people_done = 0

    def count(self, photos_done: int = 0, **increments: int) -> None:
        with self.lock:
            for key, value in increments.items():
                self.counts[key.replace("_", " ")] += value
            if self.bar is not None and photos_done:
                self.bar.update(photos_done)

    def request(self, method: str, path: str, retries: int = RETRIES, **kwargs) -> httpx.Response:
        """One call, retried on 429/503 and refused connections. Raises Fatal (401, no service) or
        Stopped (Ctrl-C while waiting to retry, or a POST sent but not answered: it may have been done)."""
        for attempt in range(retries + 1):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.ConnectError as error:  # nothing was sent: safe to retry
                if attempt == retries:
                    raise Fatal(f"cannot reach the service at {self.client.base_url}: {error}") from error
                delay = 2.0**attempt
            except httpx.TransportError as error:
                if method == "POST" or attempt == retries:
                    raise Stopped(f"no answer ({type(error).__name__}: {error})") from error
                delay = 2.0**attempt  # GET, PATCH, DELETE: the same again is harmless
            else:
                if response.status_code == 401:
                    raise Fatal(f"the service refused the API key: {detail_of(response)}")
                if response.status_code not in (429, 503) or attempt == retries:
                    return response
                delay = retry_after(response, attempt)
            if self.stop.wait(delay):
                raise Stopped("interrupted")
        raise AssertionError("unreachable")

    def existing(self) -> dict[tuple[str, str], list[tuple[str, bool]]]:
        """(name, import_folder) -> [(id, pending)] of everyone a bulk import put in the gallery."""
        found: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        offset, total = 0, 1
        while offset < total:
            response = self.request("GET", "/identities", retries=2, params={"limit": PAGE, "offset": offset})
            if response.status_code != 200:
                raise Fatal(f"GET /identities answered {response.status_code}: {detail_of(response)}")
            page = response.json()
            for identity in page["identities"]:
                metadata = identity.get("metadata") or {}
                if isinstance(metadata.get(SOURCE_KEY), str):
                    key = (identity["name"], metadata[SOURCE_KEY])
                    found.setdefault(key, []).append((identity["id"], PENDING_KEY in metadata))
            offset, total = offset + len(page["identities"]), page["total"] if page["identities"] else 0
        return found

    def work(self, todo: queue.Queue) -> None:
        """One worker thread: people from `todo` until it is empty, Ctrl-C or a fatal error."""
        while not self.stop.is_set():
            try:
                person, stale = todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.import_person(person, stale)
            except Fatal as error:
                self.fatal = self.fatal or str(error)
                self.stop.set()
            except Stopped as error:
                self.count(left_off=1)
                self.report.row(person.folder, "", f"import left off ({error}); the next run sees what was stored")
            except Exception as error:  # one person's surprise is reported, the run goes on
                self.count(not_imported=1)
                self.report.row(person.folder, "", f"not imported: {type(error).__name__}: {error}")
            with self.lock:
                self.people_done += 1
                if self.bar is not None:
                    self.bar.set_postfix_str(f"people {self.people_done}/{self.people_total}", refresh=False)

    def import_person(self, person: Person, stale: list[str]) -> None:
        for identity_id in stale:  # entries of an interrupted earlier import: it starts again
            response = self.request("DELETE", f"/identities/{identity_id}")
            if response.status_code not in (200, 404):
                raise RuntimeError(f"could not delete its interrupted import {identity_id}: {detail_of(response)}")
            self.report.row(person.folder, "", "an earlier import was interrupted: deleted and imported again")
        metadata = {**person.metadata, SOURCE_KEY: person.folder}
        remaining, identity, pending = list(person.photos), None, False
        while remaining:
            if self.stop.is_set():
                raise Stopped("interrupted" + (" after part of the photos" if identity else ""))
            files = self.read(person, take_batch(remaining, self.batch))
            if not files:
                continue
            upload = [("images", (path.name, data)) for path, data in files]
            if identity is None:
                first = {**metadata, PENDING_KEY: "true"} if remaining else metadata
                data = {"name": person.name, "metadata": json.dumps(first)}
                response = self.request("POST", "/identities", data=data, files=upload)
            else:
                response = self.request("POST", f"/identities/{identity}/faces", files=upload)
            status = response.status_code
            if status == 413 and len(files) > 1:  # the service takes fewer: smaller requests from now on
                with self.lock:
                    self.batch = max(1, min(self.batch, len(files) // 2))
                remaining[:0] = [path for path, _ in files]
                continue
            if status == 429 or status >= 500:  # still, after the retries: the next run tries again
                raise Stopped(f"the service answered {status}: {detail_of(response)}")
            if status in (200, 201):
                body = response.json()
                identity, pending = identity or body["id"], pending or (status == 201 and bool(remaining))
                rejected = {r["index"]: r["reason"] for r in body["rejected"]}
            else:  # 422: nothing stored; 404: the person was deleted meanwhile; 400, 413...
                reasons = refusal_reasons(detail_of(response), len(files)) if status == 422 else None
                rejected = {i: reasons[i] if reasons else f"refused ({status}): {detail_of(response)}"
                            for i in range(len(files))}
            for index, reason in sorted(rejected.items()):
                self.report.row(person.folder, files[index][0].name, reason)
            self.count(len(files), sent=len(files), stored=len(files) - len(rejected), refused=len(rejected))
        if identity is None:
            self.count(not_imported=1)
            self.report.row(person.folder, "", "not imported: no usable photo, nothing stored")
            return
        if pending:  # every request answered: the entry is complete
            response = self.request("PATCH", f"/identities/{identity}", json={"metadata": metadata})
            if response.status_code != 200:
                raise Stopped(f"could not mark it complete ({response.status_code}: {detail_of(response)})")
        self.count(imported=1)

    def read(self, person: Person, paths: list[Path]) -> list[tuple[Path, bytes]]:
        """(path, bytes) of each photo that can be read; the others are reported and counted done."""
        files = []
        for path in paths:
            try:
                files.append((path, path.read_bytes()))
            except OSError as error:
                self.count(1, unreadable=1)
                self.report.row(person.folder, path.name, f"unreadable: {error.strerror or error}: not sent")
        return files


# --------------------------------------------------------------------------- the command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gallery.bulk_import",
        description="Enroll FOLDER/<Person_Name>/*.jpg (one sub-folder per person) through a running service.",
        epilog="Exit status: 0 the run completed (refused photos included), 2 wrong usage, wrong key or "
        "service unreachable, 130 interrupted (Ctrl-C). A re-run skips the people already imported.",
    )
    parser.add_argument("folder", type=Path, help="one sub-folder per person; underscores in its name read as spaces")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the service (default {DEFAULT_URL})")
    parser.add_argument("--api-key", help=f"the X-API-Key (default: the environment variable {KEY_ENV})")
    parser.add_argument("--metadata", type=Path, help="CSV with a column 'folder'; its other columns become metadata")
    parser.add_argument("--report", type=Path, default=Path(DEFAULT_REPORT), help="CSV of every refused photo and "
                        f"folder problem, appended to (default {DEFAULT_REPORT} in the current directory)")
    parser.add_argument("--workers", type=int, default=4, help="people imported at once (default 4)")
    parser.add_argument("--batch", type=int, default=MAX_BATCH,
                        help=f"photos per request, at most the service's MAX_ENROLL_IMAGES (default {MAX_BATCH})")
    args = parser.parse_args(argv)
    args.api_key = args.api_key or os.environ.get(KEY_ENV, "").strip()
    if not args.api_key:
        parser.error(f"no API key: give --api-key or set {KEY_ENV} (the service keeps it in data/api_key)")
    if args.workers < 1 or args.batch < 1:
        parser.error("--workers and --batch must be at least 1")
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        metadata = read_metadata(args.metadata) if args.metadata else {}
        report = Report(args.report)
    except (OSError, ValueError, csv.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    limits = httpx.Limits(max_connections=args.workers + 1, max_keepalive_connections=args.workers + 1)
    client = httpx.Client(base_url=args.url.rstrip("/"), headers={"X-API-Key": args.api_key}, timeout=TIMEOUT_S,
                          limits=limits)
    with report, client:
        importer = Importer(client, report, args.batch)
        try:
            done = importer.existing()
            people, problems = scan(args.folder, metadata)
        except (Fatal, Stopped) as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return summary(importer, started, interrupted=True)
        for problem in problems:
            report.row(*problem)
        todo: queue.Queue = queue.Queue()
        duplicates, photos = duplicate_names(people), 0
        for person in people:
            entries = done.get((person.name, person.folder), [])
            if person.name in duplicates:
                others = ", ".join(repr(f) for f in duplicates[person.name] if f != person.folder)
                report.row(person.folder, "", f"{person.name!r} is also the name of folder {others}: "
                           + ("already imported" if entries else "not imported; rename or merge the folders"))
            if entries and not all(pending for _, pending in entries):
                importer.count(skipped=1)
            elif person.name not in duplicates:
                todo.put((person, [identity for identity, _ in entries]))
                photos += len(person.photos)
        importer.people_total = todo.qsize()
        interrupted = run(importer, todo, photos, args.workers)
    return summary(importer, started, interrupted)


def run(importer: Importer, todo: queue.Queue, photos: int, workers: int) -> bool:
    """The worker threads until they are done; True when Ctrl-C stopped them."""
    importer.bar = tqdm(total=photos, unit="photo", desc="import", dynamic_ncols=True, disable=None)
    threads = [threading.Thread(target=importer.work, args=(todo,), daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    interrupted = False
    try:
        wait_for(threads)
    except KeyboardInterrupt:
        interrupted = True
        importer.stop.set()
        print("\ninterrupted: finishing the requests in flight (Ctrl-C again abandons them)", file=sys.stderr)
        try:
            wait_for(threads)
        except KeyboardInterrupt:
            print("abandoned: the next run sees whether they were stored", file=sys.stderr)
    importer.bar.close()
    return interrupted


def wait_for(threads: list[threading.Thread]) -> None:
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(0.2)  # a timeout, so that Ctrl-C reaches this thread


def summary(importer: Importer, started: float, interrupted: bool) -> int:
    elapsed, c = time.monotonic() - started, importer.counts
    print(
        f"people: {c['imported']} imported, {c['skipped']} skipped (already there), {c['not imported']} not imported, "
        f"{c['left off']} left off\n"
        f"photos: {c['sent']} sent, {c['stored']} stored, {c['refused']} refused, {c['unreadable']} unreadable\n"
        f"{elapsed:.1f} s, {c['sent'] / elapsed if elapsed else 0:.2f} photos/s; "
        f"report: {importer.report.path} ({importer.report.rows} new rows)"
    )
    if importer.fatal:
        print(f"error: {importer.fatal}", file=sys.stderr)
        return EXIT_USAGE
    if interrupted:
        print("interrupted: run the same command again to import the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`python -m gallery.bulk_import`: the pure parts, the HTTP logic on a fake service, then the CLI
against the real service (real Triton, LFW photos) on its own empty gallery."""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import ROOT, ApiProcess, unused_port
from gallery import bulk_folder, bulk_import
from gallery.bulk_folder import (
    PENDING_KEY,
    SOURCE_KEY,
    Person,
    Report,
    duplicate_names,
    person_name,
    read_metadata,
    scan,
    take_batch,
)
from gallery.bulk_import import Importer, refusal_reasons


# --------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("folder", "name"),
    [("George_W_Bush", "George W Bush"), ("A B", "A B"), ("_Jean__Luc_ ", "Jean Luc"), ("Zoë", "Zoë"), ("___", "")],
)
def test_a_folder_name_with_underscores_read_as_spaces_is_the_person(folder: str, name: str) -> None:
    assert person_name(folder) == name


def test_metadata_csv_gives_each_folder_its_other_columns_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("\ufefffolder,team,employee_id\nAda_Lovelace,math,1815\nAlan_Turing,,1912\n", encoding="utf-8")
    assert read_metadata(path) == {
        "Ada_Lovelace": {"team": "math", "employee_id": "1815"},
        "Alan_Turing": {"team": "", "employee_id": "1912"},
    }


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name,team\nAda,math\n", "no column 'folder'"),
        ("folder,team\nAda,math\nAda,art\n", "appears twice"),
        (f"folder,{SOURCE_KEY}\nAda,x\n", "the import's own metadata"),
        ("folder,team\nAda,math,extra\n", "more cells than columns"),
    ],
)
def test_an_unusable_metadata_csv_is_refused_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment):
        read_metadata(path)


def test_scan_finds_people_and_reports_what_cannot_be_imported(tmp_path: Path) -> None:
    for folder in ("Ada_Lovelace", "A_B", "A B", "Empty", ".hidden", "Nested"):
        (tmp_path / folder).mkdir()
    for file in ("Ada_Lovelace/1.jpg", "Ada_Lovelace/notes.txt", "Ada_Lovelace/.DS_Store", "A_B/x.jpg", "A B/y.jpg"):
        (tmp_path / file).write_bytes(b"x")
    (tmp_path / "Nested" / "inner").mkdir()
    (tmp_path / "loose.jpg").write_bytes(b"x")
    people, problems = scan(tmp_path, {"Ada_Lovelace": {"team": "math"}, "Ghost": {}})
    assert [(p.folder, p.name, [f.name for f in p.photos]) for p in people] == [
        ("A B", "A B", ["y.jpg"]),
        ("A_B", "A B", ["x.jpg"]),
        ("Ada_Lovelace", "Ada Lovelace", ["1.jpg", "notes.txt"]),  # the service says what is not an image
    ]
    assert people[2].metadata == {"team": "math"}
    reasons = {(folder, file): reason for folder, file, reason in problems}
    assert set(reasons) == {("Empty", ""), ("", "loose.jpg"), ("Nested", "inner"), ("Nested", ""), ("Ghost", "")}
    assert "empty folder" in reasons["Empty", ""] and "no such sub-folder" in reasons["Ghost", ""]
    assert duplicate_names(people) == {"A B": ["A B", "A_B"]}


def test_a_batch_holds_at_most_the_limit_and_the_byte_budget(tmp_path: Path) -> None:
    paths = []
    for i, size in enumerate([10, 10, 10, 50, 10]):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"x" * size)
    remaining = list(paths)
    assert take_batch(remaining, 2, max_bytes=100) == paths[:2]
    assert take_batch(remaining, 5, max_bytes=40) == paths[2:3]  # the 50-byte photo would pass 40
    assert take_batch(remaining, 5, max_bytes=40) == paths[3:4]  # alone, even above the budget
    assert take_batch(remaining, 5, max_bytes=40) == paths[4:] and remaining == []


def test_the_reasons_of_a_422_are_read_per_photo() -> None:
    detail = (
        "no usable face in any image (image 0: no face detected; image 1: more than one face (3) and none is "
        "clearly the subject: use a photo of the person; image 2: the uploaded file is not a decodable image); "
        "nothing was stored"
    )
    assert refusal_reasons(detail, 3) == [
        "no face detected",
        "more than one face (3) and none is clearly the subject: use a photo of the person",
        "the uploaded file is not a decodable image",
    ]
    assert refusal_reasons("something else", 2) == ["something else"] * 2


def test_the_report_is_appended_to_and_a_foreign_csv_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    for run in range(2):
        with Report(path) as report:
            report.row("Ada", "1.jpg", f"run {run}")
    rows = list(csv.reader(path.open()))
    assert rows[0] == bulk_folder.REPORT_COLUMNS and [r[3] for r in rows[1:]] == ["run 0", "run 1"]
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a bulk import report"):
        Report(other)
    assert other.read_text() == "a,b\n1,2\n"


# --------------------------------------------------------------------------- the HTTP logic, on a fake service
class FakeService:
    """Answers like the service; `script` gives the answers of the enrollment requests in order."""

    def __init__(self, script: list[httpx.Response]) -> None:
        self.script = script
        self.calls: list[tuple[str, str, int, dict]] = []  # method, path, images in the request, form/JSON

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        images = body.count(b'name="images"')
        form = dict(re.findall(rb'name="(name|metadata)"\r\n\r\n(.*?)\r\n', body))
        fields = json.loads(body) if request.method == "PATCH" else {k.decode(): v.decode() for k, v in form.items()}
        self.calls.append((request.method, request.url.path, images, fields))
        if request.method in ("PATCH", "DELETE"):
            return httpx.Response(200, json={})
        return self.script.pop(0)


def answer(status: int, rejected: list[dict] | None = None, **headers: str) -> httpx.Response:
    if status in (200, 201):
        return httpx.Response(status, json={"id": "p1", "name": "Ada", "num_faces": 1, "rejected": rejected or []})
    return httpx.Response(status, json={"detail": f"status {status}"}, headers=headers)


def run_fake(tmp_path: Path, script: list[httpx.Response], photos: int, batch: int, stale=()) -> tuple:
    folder = tmp_path / "Ada"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(photos):
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(b"jpeg")
    service = FakeService(script)
    client = httpx.Client(base_url="http://fake", transport=httpx.MockTransport(service))
    with Report(tmp_path / "report.csv") as report:
        importer = Importer(client, report, batch)
        importer.import_person(Person("Ada", "Ada", tuple(paths), {"team": "math"}), list(stale))
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    return service.calls, importer.counts, rows


def test_photos_beyond_the_batch_are_added_and_the_entry_is_marked_complete_last(tmp_path: Path) -> None:
    calls, counts, rows = run_fake(tmp_path, [answer(201), answer(200, [{"index": 1, "reason": "blurred"}])], 4, 2)
    assert [(method, path, images) for method, path, images, _ in calls] == [
        ("POST", "/identities", 2), ("POST", "/identities/p1/faces", 2), ("PATCH", "/identities/p1", 0),
    ]
    assert json.loads(calls[0][3]["metadata"]) == {"team": "math", SOURCE_KEY: "Ada", PENDING_KEY: "true"}
    assert calls[2][3] == {"metadata": {"team": "math", SOURCE_KEY: "Ada"}}  # pending removed at the end
    assert [(r["file"], r["reason"]) for r in rows] == [("3.jpg", "blurred")]
    assert counts["sent"] == 4 and counts["stored"] == 3 and counts["refused"] == 1 and counts["imported"] == 1


def test_a_single_request_needs_no_pending_mark(tmp_path: Path) -> None:
    calls, counts, _ = run_fake(tmp_path, [answer(201)], 3, 10)
    assert [(m, images) for m, _, images, _ in calls] == [("POST", 3)]
    assert PENDING_KEY not in json.loads(calls[0][3]["metadata"])


def test_when_the_first_batch_is_refused_the_next_one_enrolls(tmp_path: Path) -> None:
    refused = httpx.Response(422, json={"detail": "no usable face in any image (image 0: no face detected); "
                                        "nothing was stored"})
    calls, counts, rows = run_fake(tmp_path, [refused, answer(201)], 2, 1)
    assert [(m, p) for m, p, _, _ in calls] == [("POST", "/identities"), ("POST", "/identities")]
    assert [(r["file"], r["reason"]) for r in rows] == [("0.jpg", "no face detected")]
    assert counts["imported"] == 1 and counts["refused"] == 1


def test_a_413_makes_the_requests_smaller(tmp_path: Path) -> None:
    calls, counts, _ = run_fake(tmp_path, [answer(413), answer(201), answer(200)], 4, 4)
    assert [images for _, _, images, _ in calls] == [4, 2, 2, 0]
    assert json.loads(calls[1][3]["metadata"])[PENDING_KEY] == "true"  # now it takes two requests
    assert counts["sent"] == 4 and counts["stored"] == 4


def test_429_and_503_are_retried_after_retry_after(tmp_path: Path) -> None:
    script = [answer(503, **{"Retry-After": "0"}), answer(429, **{"Retry-After": "0"}), answer(201)]
    calls, counts, _ = run_fake(tmp_path, script, 1, 10)
    assert len(calls) == 3 and counts["imported"] == 1


def test_a_person_whose_every_photo_is_refused_is_reported(tmp_path: Path) -> None:
    calls, counts, rows = run_fake(tmp_path, [answer(422)], 1, 10)
    assert counts["not imported"] == 1 and counts["imported"] == 0
    assert [(r["file"], r["reason"]) for r in rows] == [
        ("0.jpg", "status 422"), ("", "not imported: no usable photo, nothing stored"),
    ]


def test_an_interrupted_earlier_import_is_deleted_first(tmp_path: Path) -> None:
    calls, counts, rows = run_fake(tmp_path, [answer(201)], 1, 10, stale=["old"])
    assert [(m, p) for m, p, _, _ in calls] == [("DELETE", "/identities/old"), ("POST", "/identities")]
    assert "interrupted" in rows[0]["reason"]


def test_a_wrong_key_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(bulk_import.Fatal, match="API key"):
        run_fake(tmp_path, [answer(401)], 1, 10)


# --------------------------------------------------------------------------- the CLI on the real service

def lfw_people(lfw_dir: Path, count: int, minimum: int) -> list[Path]:
    folders = sorted(p for p in (lfw_dir / "deepfunneled").iterdir() if p.is_dir())
    return [f for f in folders if len(list(f.glob("*.jpg"))) >= minimum][:count]


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """The API on the session's Triton with its own empty gallery: nothing shared with other tests."""
    folder = tmp_path_factory.mktemp("bulk-api")
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}, folder / "api.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def gallery(service: ApiProcess) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client
        assert client.delete("/identities", params={"confirm": "true"}).status_code == 200  # the next test: empty


def everyone(client: httpx.Client) -> list[dict]:
    return client.get("/identities", params={"limit": 1000}).json()["identities"]


def bulk(service: ApiProcess, folder: Path, *options: str, key: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "gallery.bulk_import", str(folder), "--url", service.url, *options]
    env = {**os.environ, "FRTRITON_API_KEY": key or service.key}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def grey_jpeg(path: Path) -> None:
    Image.new("RGB", (300, 300), (128, 128, 128)).save(path, "JPEG")


@pytest.mark.integration
def test_a_folder_is_enrolled_its_problems_reported_and_a_rerun_enrolls_nobody_twice(
    gallery: httpx.Client, service: ApiProcess, lfw_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "photos"
    three, two, one = lfw_people(lfw_dir, 3, 3)
    for source, count in ((three, 3), (two, 2), (one, 1)):
        shutil.copytree(source, root / source.name, ignore=lambda _, names, n=count: sorted(names)[n:])
    (root / three.name / "notes.jpg").write_text("not a photo")  # a .txt renamed .jpg
    grey_jpeg(root / two.name / "grey.jpg")
    (root / "Nobody_Here").mkdir()
    (root / "No_Face").mkdir()
    grey_jpeg(root / "No_Face" / "grey.jpg")  # every photo refused: 422
    for twin in ("Twin_Name", "Twin Name"):
        shutil.copytree(one, root / twin)
    metadata = tmp_path / "people.csv"
    metadata.write_text(f"folder,team\n{three.name},alpha\n")
    report = tmp_path / "report.csv"

    first = bulk(service, root, "--report", str(report), "--metadata", str(metadata), "--batch", "2")
    assert first.returncode == 0, first.stderr
    assert "3 imported, 0 skipped" in first.stdout and "1 not imported" in first.stdout, first.stdout
    enrolled = {p["name"]: p for p in everyone(gallery)}
    assert set(enrolled) == {person_name(p.name) for p in (three, two, one)}
    assert enrolled[person_name(three.name)]["metadata"] == {"team": "alpha", SOURCE_KEY: three.name}
    assert all(PENDING_KEY not in p["metadata"] for p in enrolled.values())
    rows = {(r["folder"], r["file"]): r["reason"] for r in csv.DictReader(report.open())}
    for person in (three, two, one):  # every photo stored, or in the report with its reason
        refused = sum(folder == person.name for folder, _ in rows)
        assert enrolled[person_name(person.name)]["num_faces"] + refused == len(os.listdir(root / person.name))
    assert "not a decodable image" in rows[three.name, "notes.jpg"]
    assert rows[two.name, "grey.jpg"] == "no face detected" == rows["No_Face", "grey.jpg"]
    assert "nothing stored" in rows["No_Face", ""] and "empty folder" in rows["Nobody_Here", ""]
    assert "also the name of folder" in rows["Twin_Name", ""] and "also the name of folder" in rows["Twin Name", ""]

    again = bulk(service, root, "--report", str(report), "--metadata", str(metadata))
    assert again.returncode == 0, again.stderr
    # nobody enrolled again; only No_Face, absent from the gallery, is tried again (and refused again)
    assert "0 imported, 3 skipped (already there), 1 not imported" in again.stdout, again.stdout
    assert "1 sent, 0 stored, 1 refused" in again.stdout, again.stdout
    assert {p["id"]: p["num_faces"] for p in everyone(gallery)} == {p["id"]: p["num_faces"] for p in enrolled.values()}


@pytest.mark.integration
def test_an_import_interrupted_between_its_requests_is_done_again(
    gallery: httpx.Client, service: ApiProcess, lfw_dir: Path, tmp_path: Path
) -> None:
    [person] = lfw_people(lfw_dir, 1, 3)
    shutil.copytree(person, tmp_path / "photos" / person.name)
    photos = sorted(person.glob("*.jpg"))
    half = gallery.post(  # what an import stopped after its first request leaves
        "/identities",
        data={"name": person_name(person.name), "metadata": json.dumps({SOURCE_KEY: person.name, PENDING_KEY: "1"})},
        files=[("images", (photos[0].name, photos[0].read_bytes()))],
    ).json()
    result = bulk(service, tmp_path / "photos", "--report", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    [entry] = everyone(gallery)
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [r["reason"] for r in rows if not r["file"]] == [
        "an earlier import was interrupted: deleted and imported again"
    ]
    refused = sum(bool(r["file"]) for r in rows)  # LFW has the odd profile (yaw above 60 degrees)
    assert entry["id"] != half["id"] and entry["num_faces"] == len(photos) - refused
    assert entry["metadata"] == {SOURCE_KEY: person.name}


class GatedProxy:
    """A forwarding HTTP proxy in front of the service that holds every request after the first
    `opened` enrollments answered, until `release()`: the import cannot finish before the test's
    Ctrl-C lands, however fast the machine, and requests are in flight when it does."""

    def __init__(self, target: str, opened: int) -> None:
        self.target, self.opened = target, opened
        self.answered = 0
        self.enough = threading.Event()
        self.gate = threading.Event()
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_request(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                enrolling = self.command == "POST" and self.path.startswith("/identities")
                if enrolling:
                    with proxy.lock:
                        held = proxy.answered >= proxy.opened
                    if held:
                        proxy.gate.wait(timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.request(self.command, proxy.target + self.path, headers=headers, content=body,
                                       timeout=120)
                if enrolling and answer.status_code < 300:
                    with proxy.lock:
                        proxy.answered += 1
                        if proxy.answered >= proxy.opened:
                            proxy.enough.set()
                self.send_response(answer.status_code)
                for key in ("content-type", "location"):
                    if key in answer.headers:
                        self.send_header(key, answer.headers[key])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = do_request

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ctrl_c_reaches_children() -> Iterator[None]:
    """Children started meanwhile take Ctrl-C as in a terminal, however this run was started.

    A non-interactive shell starts `cmd &` with SIGINT ignored, the ignoring is inherited through
    every exec, and Python then installs no KeyboardInterrupt handler: `make test &` (or CI run in
    the background) would send the tool a Ctrl-C it never sees. A handler set here is reset to the
    default at exec, so the child starts as from a terminal.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.integration
def test_ctrl_c_loses_nothing_and_the_rerun_completes(
    gallery: httpx.Client, service: ApiProcess, lfw_dir: Path, tmp_path: Path, ctrl_c_reaches_children: None
) -> None:
    root = tmp_path / "photos"
    sources = lfw_people(lfw_dir, 12, 2)
    for source in sources:
        shutil.copytree(source, root / source.name)
    proxy = GatedProxy(service.url, opened=3)
    try:
        argv = [sys.executable, "-m", "gallery.bulk_import", str(root), "--url", proxy.url,
                "--report", str(tmp_path / "r.csv"), "--workers", "2", "--batch", "1"]
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "FRTRITON_API_KEY": service.key},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        errors: list[str] = []
        noticed = threading.Event()

        def read_errors() -> None:
            for line in process.stderr:
                errors.append(line)
                if "interrupted" in line:
                    noticed.set()

        reader = threading.Thread(target=read_errors, daemon=True)
        reader.start()
        assert proxy.enough.wait(timeout=120), "the import never made three enrollments"
        process.send_signal(signal.SIGINT)  # the next requests are held in the proxy: the import is mid-way
        assert noticed.wait(timeout=60), "the tool did not notice the Ctrl-C"
        proxy.release()  # the requests in flight finish, as the tool waits for them
        out = process.stdout.read()
        process.wait(timeout=120)
        reader.join(timeout=10)
        err = "".join(errors)
    finally:
        proxy.close()
    assert process.returncode == 130, (out, err)
    assert "interrupted" in err and "people:" in out
    assert 0 < len(everyone(gallery)) < len(sources)

    again = bulk(service, root, "--report", str(tmp_path / "r.csv"))
    assert again.returncode == 0, again.stderr
    entries = everyone(gallery)
    assert sorted(e["metadata"][SOURCE_KEY] for e in entries) == sorted(s.name for s in sources)  # each once
    assert all(PENDING_KEY not in e["metadata"] for e in entries)
    skipped = int(re.search(r"(\d+) skipped", again.stdout)[1])
    assert skipped > 0 and f"{len(sources) - skipped} imported" in again.stdout


@pytest.mark.integration
def test_a_wrong_key_or_no_service_exits_2_before_sending_anything(
    gallery: httpx.Client, service: ApiProcess, lfw_dir: Path, tmp_path: Path
) -> None:
    [person] = lfw_people(lfw_dir, 1, 1)
    shutil.copytree(person, tmp_path / "photos" / person.name)
    wrong = bulk(service, tmp_path / "photos", "--report", str(tmp_path / "r.csv"), key="not-the-key")
    assert wrong.returncode == 2 and "API key" in wrong.stderr
    unreachable = bulk(
        service, tmp_path / "photos", "--url", f"http://127.0.0.1:{unused_port()}", "--report", str(tmp_path / "r.csv")
    )
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    assert everyone(gallery) == []

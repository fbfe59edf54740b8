"""Fuzz every operation of the live OpenAPI schema with Schemathesis: no 500s, no schema violations.

Schemathesis reads /openapi.json from a real API process (real Triton behind it) and sends
generated requests, valid and invalid, to each operation: the schema's examples, the coverage
phase (boundary and wrong-type values) and random fuzzing. Every answer must be a documented
status code, not a 5xx, with a documented content type and a body matching the schema of its
status code.

It runs the `schemathesis run` command rather than the pytest integration: the lazy
`schemathesis.pytest.from_fixture` loader of 4.32 writes `node._nodeid`, which pytest 9.2 no
longer has. The JSON report it writes is what the assertions read.

The server gets its own empty gallery: a fuzzed DELETE /identities?confirm=true must not reach
into the gallery other tests share. Every request carries the key the server generated, so the
gallery routes are fuzzed past the key check; Schemathesis' `ignored_auth` check also sends them
without it and fails if any answers anything but 401.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ApiProcess, TritonProcess

pytest.importorskip("schemathesis", reason="the fuzz run needs schemathesis (requirements-dev.txt)")

pytestmark = pytest.mark.integration

# Modest, so the run takes well under two minutes on two cores; deterministic generation makes
# a failure reproduce run after run.
EXAMPLES_PER_OPERATION = 25
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth"
)
# Stateful runs chain operations through OpenAPI links, which this schema does not declare.
PHASES = "examples,coverage,fuzzing"
FUZZ_TIMEOUT_S = 900  # a hang must fail the test, not the CI job
REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def fuzz_server(triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    server = ApiProcess({"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db")}, folder / "api.log")
    server.start()
    yield server
    server.stop()


def run_schemathesis(server: ApiProcess, folder: Path) -> tuple[subprocess.CompletedProcess, dict]:
    report = folder / "schemathesis.json"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
        "--header", f"X-API-Key: {server.key}",
        "--checks", CHECKS,
        "--phases", PHASES,
        "--mode", "all",  # valid and invalid requests
        "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--generation-deterministic",  # also means no example database carried between runs
        "--workers", "1",  # Hypothesis' lambda-source cache is not thread-safe in this version
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S)
    return done, json.loads(report.read_text()) if report.is_file() else {}


def test_fuzzing_every_operation_finds_no_server_error_or_schema_violation(
    fuzz_server: ApiProcess, tmp_path: Path
) -> None:
    done, report = run_schemathesis(fuzz_server, tmp_path)
    output = done.stdout[-6000:] + done.stderr[-2000:]
    assert report, f"schemathesis wrote no report (exit {done.returncode}):\n{output}"
    assert report["failures"] == [] and report["errors"] == [], output
    assert done.returncode == 0, output
    assert report["stop_reason"] == "completed"
    operations = report["operations"]
    assert operations["tested"] == operations["total"] >= 15, operations  # every route, none skipped
    cases = report["test_cases"]
    assert cases["generated"] >= 10 * operations["total"], cases  # a real run, not an empty one
    assert cases["with_failures"] == 0 and cases["errored"] == 0, cases
    with fuzz_server.client(timeout=30) as client:  # nothing wedged the process or Triton
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200

"""Unit: where the API key comes from, the wrong-key window (fake clock), and the check over HTTP.

The HTTP tests run the real app in-process (FastAPI's TestClient, lifespan included) with an
unreachable Triton: the key check answers before any inference is asked for.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api import keys
from api.keys import FailureWindow, KeyFileError, KeyGuard, Origin, Outcome, resolve_key
from app import create_app
from settings import Settings

WINDOW_S = 60.0
LIMIT = 3
UNREACHABLE_TRITON = "127.0.0.1:9"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(tmp_path: Path, **values) -> Settings:
    return Settings(_env_file=None, gallery_db=tmp_path / "g.db", triton_url=UNREACHABLE_TRITON, **values)


# --------------------------------------------------------------------------- the key file
def test_the_first_resolution_creates_a_0600_key_file_and_the_next_reuses_it(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        first = resolve_key(settings(tmp_path))
    finally:
        os.umask(old_umask)
    path = tmp_path / "api_key"
    assert first.origin is Origin.FILE and first.path == path and first.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.key) >= 43 and first.key == path.read_text().strip()  # token_urlsafe(32): 256 bits
    again = resolve_key(settings(tmp_path))
    assert again.key == first.key and not again.created
    assert not list(tmp_path.glob(".api_key.*"))  # no staged file left behind


def test_an_explicit_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    resolved = resolve_key(settings(tmp_path, api_key="explicit-key-0123456789"))
    assert resolved.key == "explicit-key-0123456789" and resolved.origin is Origin.SETTING
    assert not (tmp_path / "api_key").exists()
    (tmp_path / "api_key").write_text("from-the-file\n")
    assert resolve_key(settings(tmp_path, api_key="explicit-key-0123456789")).key == "explicit-key-0123456789"


def test_a_blank_api_key_means_none_and_api_key_open_means_no_key(tmp_path: Path) -> None:
    assert resolve_key(settings(tmp_path, api_key="  ")).origin is Origin.FILE
    opened = resolve_key(settings(tmp_path / "other", api_key_open=True))
    assert opened.key is None and opened.origin is Origin.OPEN and not (tmp_path / "other").exists()


def test_api_key_file_sets_the_place_and_its_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "deep" / "key"
    resolved = resolve_key(settings(tmp_path, api_key_file=path))
    assert resolved.path == path and path.read_text().strip() == resolved.key
    assert not (tmp_path / "api_key").exists()


def test_an_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "api_key"
    path.write_text("  chosen-by-the-owner  \n")
    path.chmod(0o600)
    assert resolve_key(settings(tmp_path)).key == "chosen-by-the-owner"
    assert path.read_text() == "  chosen-by-the-owner  \n"


def test_processes_starting_together_end_up_with_one_key(tmp_path: Path) -> None:
    found: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        found.append(resolve_key(settings(tmp_path)).key)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert found[0] == (tmp_path / "api_key").read_text().strip()


def test_without_hard_links_the_file_is_still_created_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(*_: object) -> None:
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(keys.os, "link", no_links)
    first = resolve_key(settings(tmp_path))
    assert first.created and stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    assert resolve_key(settings(tmp_path)).key == first.key


def test_an_empty_or_unwritable_key_file_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "api_key").write_text("\n")
    with pytest.raises(KeyFileError, match="is empty: delete it"):
        resolve_key(settings(tmp_path))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(KeyFileError, match="cannot create the API key file .*API_KEY_FILE"):
        resolve_key(settings(tmp_path, api_key_file=blocker / "api_key"))


def test_the_log_names_the_file_and_never_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="frtriton")
    made = KeyGuard.from_settings(settings(tmp_path))
    reused = KeyGuard.from_settings(settings(tmp_path))
    text = caplog.text
    assert f"generated a new API key in {tmp_path / 'api_key'}" in text
    assert f"API key: read from {tmp_path / 'api_key'}" in text
    assert made.resolved.key == reused.resolved.key and made.resolved.key not in text


def test_a_key_file_others_can_read_and_a_short_explicit_key_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "api_key"
    path.write_text("readable-by-all-0123456789\n")
    path.chmod(0o644)
    KeyGuard.from_settings(settings(tmp_path))
    KeyGuard.from_settings(settings(tmp_path, api_key="short"))
    assert "can be read by other users (mode 644)" in caplog.text
    assert "API_KEY is shorter than 16 characters" in caplog.text and "short\n" not in caplog.text


def test_api_key_open_warns_and_api_key_reads_is_noted_as_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="frtriton")
    KeyGuard.from_settings(settings(tmp_path, api_key_open=True, api_key_reads=False))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("API_KEY_OPEN=true: the gallery is open to anyone" in r.getMessage() for r in warnings)
    assert "API_KEY_READS is no longer used" in caplog.text


# --------------------------------------------------------------------------- the window
def test_the_window_refuses_after_the_limit_and_says_for_how_long() -> None:
    clock = FakeClock()
    window = FailureWindow(LIMIT, WINDOW_S, clock=clock)
    for _ in range(LIMIT):
        assert window.retry_after("a") is None
        window.record("a")
        clock.now += 1
    assert window.retry_after("a") == pytest.approx(WINDOW_S - LIMIT)  # until the oldest failure leaves
    assert window.retry_after("b") is None  # per address


def test_the_window_slides_and_stays_full_while_wrong_keys_go_on() -> None:
    clock = FakeClock()
    window = FailureWindow(LIMIT, WINDOW_S, clock=clock)
    answered = 0
    for _ in range(int(5 * WINDOW_S)):  # one wrong key a second for five windows, refused ones included
        answered += window.retry_after("a") is None
        window.record("a")
        clock.now += 1
    assert answered == LIMIT  # the refused ones keep the window full
    clock.now += WINDOW_S  # a window without a wrong key: open again, and forgotten
    assert window.retry_after("a") is None and len(window) == 0
    paced = WINDOW_S / LIMIT + 0.1
    for _ in range(3 * LIMIT):  # fewer than LIMIT a window: never refused
        assert window.retry_after("b") is None
        window.record("b")
        clock.now += paced


def test_the_window_tracks_a_bounded_number_of_addresses() -> None:
    clock = FakeClock()
    window = FailureWindow(1, WINDOW_S, max_addresses=3, clock=clock)
    for address in ("a", "b", "c"):
        window.record(address)
    window.record("a")  # a fails again: b is now the least recently failing
    window.record("d")
    assert len(window) == 3
    assert window.retry_after("b") is None and window.retry_after("a") is not None
    for n in range(1000):
        window.record(f"10.0.{n // 256}.{n % 256}")
    assert len(window) == 3


def test_the_guard_never_refuses_the_right_key_and_does_not_count_missing_ones() -> None:
    clock = FakeClock()
    guard = KeyGuard(keys.ResolvedKey("the-key", Origin.SETTING), FailureWindow(LIMIT, WINDOW_S, clock=clock))
    for _ in range(2 * LIMIT):
        assert guard.check(None, "a").outcome is Outcome.MISSING
        assert guard.check("", "a").outcome is Outcome.MISSING
    assert [guard.check("guess", "a").outcome for _ in range(LIMIT)] == [Outcome.WRONG] * LIMIT
    limited = guard.check("guess", "a")
    assert limited.outcome is Outcome.LIMITED and limited.retry_after_s == WINDOW_S
    assert guard.check("the-key", "a").outcome is Outcome.ACCEPTED
    assert guard.check("the-key-but-longer", "a").outcome is Outcome.LIMITED
    assert guard.check(None, "a").outcome is Outcome.MISSING
    assert guard.check("guess", "b").outcome is Outcome.WRONG


def test_an_open_guard_accepts_anything() -> None:
    guard = KeyGuard(keys.ResolvedKey(None, Origin.OPEN), FailureWindow(1, WINDOW_S))
    assert guard.open and guard.check(None, "a").outcome is Outcome.ACCEPTED
    assert guard.check("whatever", "a").outcome is Outcome.ACCEPTED


# --------------------------------------------------------------------------- over HTTP
@pytest.fixture()
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(settings(tmp_path, api_key_max_failures=LIMIT))) as client:
        yield client


def test_the_http_answers_401_with_where_the_key_is_then_429(app_client: TestClient, tmp_path: Path) -> None:
    key = (tmp_path / "api_key").read_text().strip()
    missing = app_client.get("/identities")
    assert missing.status_code == 401
    assert missing.json() == {
        "detail": f"missing X-API-Key header: the key is in {tmp_path / 'api_key'} on the server "
        f"(cat {tmp_path / 'api_key'}), or set API_KEY"
    }
    for _ in range(LIMIT):
        assert app_client.get("/identities", headers={"X-API-Key": "guess"}).status_code == 401
    limited = app_client.delete("/identities", params={"confirm": "true"}, headers={"X-API-Key": "guess"})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == str(int(WINDOW_S))
    assert app_client.get("/identities", headers={"X-API-Key": key}).json() == {"total": 0, "identities": []}


def test_forwarded_addresses_count_only_when_trusted(tmp_path: Path) -> None:
    def limited_after_guesses(trust: bool) -> bool:
        folder = tmp_path / str(trust)
        with TestClient(create_app(settings(folder, api_key_max_failures=1, trust_forwarded_for=trust))) as client:
            for n in range(3):  # a new address each time, as a client forging the header would claim
                forged = {"X-API-Key": "guess", "X-Forwarded-For": f"198.51.100.{n}, 10.0.0.{n}"}
                last = client.get("/identities", headers=forged)
            return last.status_code == 429

    assert limited_after_guesses(trust=False)  # the peer address counts: forging the header changes nothing
    assert not limited_after_guesses(trust=True)  # the proxy's last entry counts: three addresses, one guess each


def test_the_openapi_schema_declares_the_key_on_the_gallery_routes_only(app_client: TestClient) -> None:
    schema = app_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schema["components"]["securitySchemes"]["APIKey"]["description"],
    }
    secured = {
        (method, path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if operation.get("security") == [{"APIKey": []}]
    }
    gallery = {(m, p) for p, ops in schema["paths"].items() for m in ops if p.startswith(("/identities", "/identify"))}
    assert secured == gallery and len(gallery) == 13  # with verify and /identify/embedding
    for method, path in gallery:
        assert {"401", "429"} <= set(schema["paths"][path][method]["responses"]), (method, path)
    assert "Authorize" in schema["info"]["description"]


def test_the_trusted_forwarded_address_is_the_last_entry_of_every_header_and_bounded(tmp_path: Path) -> None:
    from starlette.requests import Request

    from api.dependencies import MAX_ADDRESS_CHARS, client_address

    def request(*forwarded: str) -> Request:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return Request({"type": "http", "headers": headers, "client": ("10.1.2.3", 5555)})

    trusting = settings(tmp_path, trust_forwarded_for=True)
    assert client_address(request("198.51.100.7"), settings(tmp_path)) == "10.1.2.3"  # not trusted: the peer
    assert client_address(request("1.1.1.1, 198.51.100.7"), trusting) == "198.51.100.7"
    assert client_address(request("1.1.1.1", "198.51.100.8"), trusting) == "198.51.100.8"  # two header lines
    assert client_address(request(""), trusting) == "10.1.2.3"  # nothing usable: the peer
    assert len(client_address(request("x" * 10_000), trusting)) == MAX_ADDRESS_CHARS

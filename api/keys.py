"""The API key of the gallery routes: where it comes from, how it is checked, and the wrong-key limit.

No HTTP here (`api.dependencies` turns a `Verdict` into 401/429); the clock of `FailureWindow`
can be replaced, so every rule is tested without waiting.

* **Where the key comes from** (`resolve_key`): `API_KEY` when set; otherwise the key in
  `API_KEY_FILE` (default `api_key` beside `GALLERY_DB`), generated on the first start
  (`secrets.token_urlsafe(32)`: 256 random bits), written with mode 0600 and linked into place
  so it appears whole or not at all and is never overwritten (several processes starting at once
  on one volume end up with the same key). `API_KEY_OPEN=true` turns the key off.
* **How it is checked** (`KeyGuard.check`): the SHA-256 digests of the given and the expected key
  are compared with `hmac.compare_digest`, so neither the content nor the length of the key shows
  in the timing.
* **Wrong keys** (`FailureWindow`): at most `API_KEY_MAX_FAILURES` wrong keys per client address
  within a sliding `API_KEY_FAILURE_WINDOW_S`; beyond, wrong keys are answered 429 with
  `Retry-After` until the window has room again (wrong keys sent meanwhile keep it full). A right
  key is always accepted at once, even from an address that is being refused, so an attacker
  sharing an address (NAT, a proxy) cannot lock the key's owners out. Missing keys are not
  counted: they guess nothing. At most `MAX_TRACKED_ADDRESSES` addresses are remembered (the
  least recently failing one is forgotten first), so memory stays bounded.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from settings import PROJECT_ROOT, Settings

log = logging.getLogger("frtriton")

KEY_FILE_NAME = "api_key"
KEY_FILE_MODE = 0o600
KEY_BYTES = 32  # secrets.token_urlsafe(32): 256 bits, 43 characters
MAX_TRACKED_ADDRESSES = 10_000
# Below this many characters a key set in API_KEY is called guessable in the log.
SHORT_KEY_CHARS = 16


class KeyFileError(RuntimeError):
    """The key file cannot be read or written: start-up stops with this message."""


# --------------------------------------------------------------------------- the key
class Origin(enum.Enum):
    SETTING = "API_KEY"
    FILE = "file"
    OPEN = "open"


@dataclass(frozen=True)
class ResolvedKey:
    """The key the gallery routes need (None when open), where it came from, and its file."""

    key: str | None
    origin: Origin
    path: Path | None = None
    created: bool = False


def key_file_path(settings: Settings) -> Path:
    """`API_KEY_FILE`, or `api_key` beside `GALLERY_DB` (also with GALLERY_URL: the file is local)."""
    return settings.api_key_file or settings.gallery_db.parent / KEY_FILE_NAME


def shown_path(path: Path) -> str:
    """The path as an operator types it: relative to the project (the image's WORKDIR) when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(PROJECT_ROOT)) if resolved.is_relative_to(PROJECT_ROOT) else str(resolved)


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(f"cannot read the API key file {path}: {error}") from error
    if not key:
        raise KeyFileError(f"the API key file {path} is empty: delete it to have a new key generated, or set API_KEY")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("the API key file %s can be read by other users (mode %o): chmod 600 it", path, mode)
    return key


def _write_new(path: Path, text: str) -> None:
    """Create `path` (never replacing a file) with mode 0600 and `text`, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), KEY_FILE_MODE)  # whatever the umask
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _create_key_file(path: Path) -> bool:
    """Write a new random key to `path` unless a file is there; True when this call wrote it.

    The key is written to a staged file first and hard-linked into place: the link is atomic and
    fails when `path` exists, so a reader sees the whole key or no file, and a key is never
    replaced. On a file system without hard links the file is created in place (still never
    replacing one).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = secrets.token_urlsafe(KEY_BYTES) + "\n"
    staged = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_new(staged, text)
    try:
        os.link(staged, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network and FUSE file systems)
        try:
            _write_new(path, text)
        except FileExistsError:
            return False
    finally:
        staged.unlink(missing_ok=True)
    return True


def resolve_key(settings: Settings) -> ResolvedKey:
    """The key of this start (see the module docstring); creates the key file when needed."""
    if settings.api_key_open:
        return ResolvedKey(None, Origin.OPEN)
    if settings.api_key is not None:
        return ResolvedKey(settings.api_key, Origin.SETTING)
    path = key_file_path(settings)
    created = False
    if not path.exists():
        try:
            created = _create_key_file(path)
        except OSError as error:
            raise KeyFileError(
                f"cannot create the API key file {path}: {error}; set API_KEY_FILE to a writable place, or API_KEY"
            ) from error
    return ResolvedKey(_read_key(path), Origin.FILE, path, created)


def log_key_source(resolved: ResolvedKey, settings: Settings) -> None:
    """One line per start saying where the key is (never the key itself), or that there is none."""
    if "api_key_reads" in settings.model_fields_set:
        log.info("API_KEY_READS is no longer used: gallery reads always need the API key")
    if resolved.origin is Origin.OPEN:
        ignored = " (API_KEY is ignored)" if settings.api_key else ""
        log.warning(
            "API_KEY_OPEN=true: the gallery is open to anyone who can reach this port: enrollment, deletion, "
            "the list of everyone enrolled and identification need no key%s. Use this for a local demo only.",
            ignored,
        )
    elif resolved.origin is Origin.SETTING:
        log.info("API key: the value of API_KEY (send it in the X-API-Key header)")
        if len(resolved.key or "") < SHORT_KEY_CHARS:
            log.warning(
                "API_KEY is shorter than %d characters: it can be guessed; use e.g. "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                SHORT_KEY_CHARS,
            )
    else:
        verb = "generated a new API key in" if resolved.created else "API key: read from"
        log.warning(
            "%s %s (send it in the X-API-Key header; read it with `cat %s`)",
            verb, resolved.path, shown_path(resolved.path),
        )


# --------------------------------------------------------------------------- wrong keys
class FailureWindow:
    """Wrong keys per client address in a sliding window, for at most `max_addresses` addresses."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        # address -> times of its last `limit` failures, oldest first; least recently failing address first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try a key again, or None when it may now."""
        now = self.clock()
        times = self._recent(address, now)
        if times is None or len(times) < self.limit:
            return None
        return times[0] + self.window_s - now

    def record(self, address: str) -> None:
        """One wrong key from `address`, now."""
        now = self.clock()
        times = self._recent(address, now)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
        times.append(now)
        self._failures.move_to_end(address)


# --------------------------------------------------------------------------- the check
class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    MISSING = "missing"
    WRONG = "wrong"
    LIMITED = "limited"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    retry_after_s: int | None = None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


class KeyGuard:
    """Checks the key of one request: accepted, missing, wrong, or refused for too many wrong ones."""

    def __init__(self, resolved: ResolvedKey, failures: FailureWindow) -> None:
        self.resolved = resolved
        self.failures = failures
        self._expected = _digest(resolved.key) if resolved.key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyGuard:
        resolved = resolve_key(settings)
        log_key_source(resolved, settings)
        return cls(resolved, FailureWindow(settings.api_key_max_failures, settings.api_key_failure_window_s))

    @property
    def open(self) -> bool:
        return self._expected is None

    def check(self, given: str | None, address: str) -> Verdict:
        if self._expected is None:
            return Verdict(Outcome.ACCEPTED)
        if not given:
            return Verdict(Outcome.MISSING)
        if hmac.compare_digest(_digest(given), self._expected):
            return Verdict(Outcome.ACCEPTED)  # never slowed down, whatever the address did before
        wait = self.failures.retry_after(address)
        self.failures.record(address)
        if wait is not None:
            return Verdict(Outcome.LIMITED, max(1, math.ceil(wait)))
        if self.failures.retry_after(address) is not None:
            log.warning(
                "%d failed API key checks from %s within %g s: further ones are answered 429",
                self.failures.limit, address, self.failures.window_s,
            )
        return Verdict(Outcome.WRONG)

    def where_to_find_it(self) -> str:
        """How a client gets the key: the end of every 401 detail."""
        if self.resolved.origin is Origin.FILE and self.resolved.path is not None:
            where = shown_path(self.resolved.path)
            return f"the key is in {where} on the server (cat {where}), or set API_KEY"
        return "use the key the server was given in API_KEY"

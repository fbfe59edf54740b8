"""Fetch a pinned archive into a cache: progress bar, resume, checksum, atomic.

`fetch(url, cache_dir / name, sha256)` returns the cached file when it is already
there with the right checksum; otherwise it continues a previous partial download
(HTTP Range) or restarts it, verifies size and sha256, and only then renames the
`.part` file into place. `file://` URLs and plain paths work the same way (mirrors,
air-gapped installs, tests).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from errors import ModelRepositoryError

CHUNK = 1024 * 1024
TIMEOUT_S = 60


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _progress(total: int | None, initial: int, label: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False)


def _open(url: str, offset: int):
    request = urllib.request.Request(url, headers={"User-Agent": "fr-triton-model-installer"})
    if offset and url.startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def fetch(url: str, target: Path, sha256: str, size: int | None = None, progress: bool = True) -> Path:
    """Download `url` to `target` unless it is cached; verify it; return `target`.

    Raises ModelRepositoryError (nothing left at `target`) on a network error or a
    checksum/size mismatch; a partial `.part` file is kept for the next try only when
    the transfer was cut off, not when the content was wrong.
    """
    if target.is_file() and sha256_file(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        with _open(url, offset) as response:
            status = getattr(response, "status", 200)
            if offset and status != 206:
                offset = 0  # the server ignored Range (or file://): restart
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else size
            with open(part, "ab" if offset else "wb") as out:
                bar = _progress(total, offset, target.name) if progress else None
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
                out.flush()
                os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise ModelRepositoryError(f"download of {url} failed ({error}); run again to resume") from error
    actual_size = part.stat().st_size
    if total is not None and actual_size < total:  # the connection closed early
        raise ModelRepositoryError(
            f"download of {url} stopped at {actual_size} of {total} bytes; run again to resume"
        )
    digest = sha256_file(part)
    if digest != sha256 or (size is not None and actual_size != size):
        part.unlink(missing_ok=True)
        raise ModelRepositoryError(
            f"{url}: got {actual_size} bytes with sha256 {digest}, expected sha256 {sha256}"
            + (f" and {size} bytes" if size is not None else "")
            + "; nothing was installed"
        )
    os.replace(part, target)
    return target


def copy_into_cache(source: Path, target: Path, sha256: str) -> Path:
    """A local archive the user brought: verify it, keep a copy in the cache."""
    if not source.is_file():
        raise ModelRepositoryError(f"{source} does not exist")
    digest = sha256_file(source)
    if digest != sha256:
        raise ModelRepositoryError(
            f"{source}: sha256 {digest} does not match the pinned {sha256}; nothing was installed"
        )
    if source.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return target

"""Drop the parts of the nvidia-pytriton wheel this interpreter can never load (image build step).

The wheel ships a Python backend stub for every Python from 3.8 to 3.13; triton_service.py
only ever uses the one for the running interpreter (`find_triton_install`). A library bundled
in `nvidia_pytriton.libs` (auditwheel names them `name-<hash>.so...`) whose file name no
remaining binary contains (neither as a DT_NEEDED entry nor as a dlopen() string) is never
loaded either: the 3.13 stub's own libpython 3.13 goes with that stub. Prints what it removed.

    python Docker/prune_pytriton.py [--dry-run]
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def main(dry_run: bool = False) -> int:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        print("prune_pytriton: nvidia-pytriton is not installed; nothing to do")
        return 0
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = root / "python_backend_stubs"
    if not (stubs / version / "triton_python_backend_stub").is_file():
        print(f"prune_pytriton: no stub for Python {version}; leaving the wheel as it is")
        return 1

    removed = 0
    for stub_dir in sorted(p for p in stubs.iterdir() if p.is_dir() and p.name != version):
        removed += sum(f.stat().st_size for f in stub_dir.rglob("*") if f.is_file())
        print(f"prune_pytriton: stub for Python {stub_dir.name}")
        if not dry_run:
            shutil.rmtree(stub_dir)

    # What stays: the whole pytriton package (server, backends, caches, the kept stub, its
    # Python code) and the bundled libraries. Iterate to a fixed point: a library that only
    # unused libraries name is unused too.
    kept_stub = stubs / version
    binaries = [
        p
        for p in root.parent.rglob("*")
        if p.is_file() and (not p.is_relative_to(stubs) or p.is_relative_to(kept_stub))
    ]
    bundled = sorted(p for p in libs.iterdir() if p.is_file()) if libs.is_dir() else []
    blobs = {p: p.read_bytes() for p in binaries + bundled}
    unused: set[Path] = set()
    while True:
        users = [p for p in blobs if p not in unused]
        newly = {
            lib
            for lib in bundled
            if lib not in unused and not any(lib.name.encode() in blobs[p] for p in users if p != lib)
        }
        if not newly:
            break
        unused |= newly
    for lib in sorted(unused):
        removed += lib.stat().st_size
        print(f"prune_pytriton: unreferenced {lib.name}")
        if not dry_run:
            lib.unlink()
    print(f"prune_pytriton: {'would remove' if dry_run else 'removed'} {removed / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(dry_run="--dry-run" in sys.argv[1:]))

"""POSIX shared-memory regions for the tensors the API exchanges with a Triton on the same host.

Over HTTP a 640x640 detector request carries 1.2 MB in and ~1 MB out, copied through aiohttp,
Triton's HTTP server and their buffers. With Triton's *system shared memory* the API writes the
input into a region Triton maps too, and Triton writes the outputs into it; the HTTP request only
names the regions (README, Performance: measured, tritonserver's and the API's CPU per request).

This module is the memory side only (no tritonclient; `triton_service.TritonClient` registers
the regions with Triton and falls back to HTTP for a remote one):

* `RegionPool`: regions reused across requests, one per request in flight, sized in powers of
  two; names unique per pool (pid + random), so two API processes on one Triton never collide;
  `close()` unlinks them all (and Python's resource tracker unlinks any left at a crash).
* `write` / `read`: numpy arrays into and out of a region at byte offsets.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from multiprocessing import shared_memory

import numpy as np

NAME_PREFIX = "frtriton"
MIN_REGION_BYTES = 1 << 20  # 1 MiB: a 112x112 face batch and a small canvas share sizes
ALIGNMENT = 64  # byte offsets of the tensors inside a region (cache lines; Triton needs none)


def aligned(nbytes: int) -> int:
    return -(-int(nbytes) // ALIGNMENT) * ALIGNMENT


def region_size(nbytes: int) -> int:
    """The power of two >= nbytes (at least MIN_REGION_BYTES): few distinct sizes, so regions are reused."""
    size = MIN_REGION_BYTES
    while size < nbytes:
        size *= 2
    return size


@dataclass(eq=False)
class Region:
    """One shared-memory block: `name` for Triton's registry, `key` its /dev/shm name."""

    name: str
    key: str
    size: int
    memory: shared_memory.SharedMemory = field(repr=False)
    registered: bool = False  # with the Triton it is used against (cleared when Triton forgets it)

    def write(self, offset: int, array: np.ndarray) -> None:
        target = np.ndarray(array.shape, array.dtype, buffer=self.memory.buf, offset=offset)
        target[...] = array

    def read(self, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A copy (the region is reused by the next request)."""
        return np.ndarray(shape, dtype, buffer=self.memory.buf, offset=offset).copy()


class RegionPool:
    """Regions of this process, handed out one per request in flight and given back after it."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{NAME_PREFIX}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._free: list[Region] = []
        self._all: list[Region] = []

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple(self._all)

    def acquire(self, nbytes: int) -> Region:
        """The smallest free region that holds `nbytes`, else a new one."""
        fitting = [r for r in self._free if r.size >= nbytes]
        if fitting:
            region = min(fitting, key=lambda r: r.size)
            self._free.remove(region)
            return region
        name = f"{self.prefix}_{len(self._all)}"
        size = region_size(nbytes)
        memory = shared_memory.SharedMemory(name=name, create=True, size=size)
        region = Region(name=name, key=f"/{name}", size=size, memory=memory)
        self._all.append(region)
        return region

    def release(self, region: Region) -> None:
        if region in self._all and region not in self._free:
            self._free.append(region)

    def forget_registrations(self) -> None:
        """After Triton restarted: it knows none of the regions any more."""
        for region in self._all:
            region.registered = False

    def close(self) -> None:
        """Unlink every region (Triton must have unregistered them, or be gone)."""
        for region in self._all:
            region.memory.close()
            with contextlib.suppress(FileNotFoundError):
                region.memory.unlink()
        self._all.clear()
        self._free.clear()

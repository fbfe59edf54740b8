"""The shared-memory regions' bookkeeping (pure: no Triton): sizes, reuse, unique names, cleanup."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from triton_shm import MIN_REGION_BYTES, RegionPool, aligned, region_size

SHM_DIR = Path("/dev/shm")


@pytest.mark.parametrize(
    ("nbytes", "size"),
    [(1, MIN_REGION_BYTES), (MIN_REGION_BYTES, MIN_REGION_BYTES), (MIN_REGION_BYTES + 1, 2 * MIN_REGION_BYTES),
     (640 * 640 * 3 + 1_008_000, 4 * MIN_REGION_BYTES)],
)
def test_regions_come_in_powers_of_two(nbytes: int, size: int) -> None:
    assert region_size(nbytes) == size


@pytest.mark.parametrize(("nbytes", "offset"), [(0, 0), (1, 64), (64, 64), (65, 128)])
def test_offsets_are_aligned(nbytes: int, offset: int) -> None:
    assert aligned(nbytes) == offset


def test_a_released_region_is_reused_and_a_busy_one_is_not() -> None:
    pool = RegionPool()
    try:
        first = pool.acquire(1000)
        second = pool.acquire(1000)  # the first is still in use
        assert first is not second and first.name != second.name
        pool.release(first)
        assert pool.acquire(500) is first
        pool.release(second)
        assert pool.acquire(3 * MIN_REGION_BYTES).size == 4 * MIN_REGION_BYTES  # too big for the free one
        assert len(pool.regions) == 3
    finally:
        pool.close()


def test_arrays_round_trip_at_offsets() -> None:
    pool = RegionPool()
    try:
        region = pool.acquire(4096)
        image = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        scores = np.linspace(0, 1, 10, dtype=np.float32).reshape(5, 2)
        region.write(0, image)
        region.write(aligned(image.nbytes), scores)
        np.testing.assert_array_equal(region.read(0, image.dtype, image.shape), image)
        np.testing.assert_array_equal(region.read(aligned(image.nbytes), np.float32, (5, 2)), scores)
    finally:
        pool.close()


def test_two_pools_of_one_process_never_share_a_name_and_name_their_process() -> None:
    a, b = RegionPool(), RegionPool()
    try:
        names = {a.acquire(10).name, b.acquire(10).name}
        assert len(names) == 2
        assert all(f"_{os.getpid()}_" in name for name in names)
    finally:
        a.close()
        b.close()


def test_close_unlinks_every_region() -> None:
    pool = RegionPool()
    regions = [pool.acquire(10), pool.acquire(10)]
    assert all((SHM_DIR / r.name).exists() for r in regions)
    pool.close()
    assert not any((SHM_DIR / r.name).exists() for r in regions)
    assert pool.regions == ()

"""TritonClient through system shared memory against a real tritonserver: same outputs, restarts, two processes.

The `triton` fixture is the session's Triton on the project's repository; the restart test
starts (and restarts) a Triton of its own so the others keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import ROOT, TritonProcess, core_repository, photo
from imaging.decode import decode_image
from pipeline import FacePipeline
from settings import Settings
from triton_service import DETECTOR, RECOGNIZER, TritonClient, shared_memory_mode
from vision.scrfd import letterbox

SHM_DIR = Path("/dev/shm")


def canvas(size: int = 640) -> np.ndarray:
    image = decode_image(photo("t1.jpg").read_bytes(), max_pixels=Settings().max_image_pixels)
    batch = np.zeros((1, size, size, 3), np.uint8)
    letterbox(image, size, out=batch[0])
    return batch


def faces() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)


def registered(url: str) -> set[str]:
    """Names of the system shared-memory regions Triton holds."""
    answer = httpx.get(f"http://{url}/v2/systemsharedmemory/status", timeout=30)
    return {region["name"] for region in answer.json()}


async def outputs(client: TritonClient, calls: int = 2) -> list[dict[str, np.ndarray]]:
    """Detector and recognizer outputs, each model called `calls` times (the first learns the layout)."""
    found = []
    for _ in range(calls):
        found.append(await client.infer(DETECTOR, canvas()) | await client.infer(RECOGNIZER, faces()))
    return found


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize(
    ("url", "mode", "expected"),
    [(None, "auto", "auto"), ("127.0.0.1:8000", "auto", "auto"), ("localhost:8000", "auto", "auto"),
     ("triton:8000", "auto", "off"), ("10.0.0.5:8000", "auto", "off"), ("10.0.0.5:8000", "on", "on"),
     (None, "off", "off")],
)
def test_auto_uses_shared_memory_only_for_a_triton_on_this_host(url, mode, expected) -> None:
    assert shared_memory_mode(Settings(triton_url=url, triton_shared_memory=mode)) == expected


def test_shared_memory_on_and_off_give_identical_outputs(triton: TritonProcess) -> None:
    async def run() -> tuple[list, list, set[str], set[str]]:
        plain, shared = TritonClient(triton.url, 60, "off"), TritonClient(triton.url, 60, "on")
        await plain.open()
        await shared.open()
        try:
            over_http, over_shm = await outputs(plain), await outputs(shared)
            names = {r.name for r in shared.shared_memory_regions}
            return over_http, over_shm, names, registered(triton.url)
        finally:
            await plain.close()
            await shared.close()

    over_http, over_shm, names, held = asyncio.run(run())
    for http_answer, shm_answer in zip(over_http, over_shm, strict=True):
        assert_same(http_answer, shm_answer)
    assert names and names <= held  # the second calls really went through registered regions
    assert not names & registered(triton.url)  # close() unregistered them
    assert not any((SHM_DIR / name).exists() for name in names)  # and unlinked them


def test_the_pipeline_finds_the_same_faces_and_embeddings_through_shared_memory(triton: TritonProcess) -> None:
    image = decode_image(photo("t1.jpg").read_bytes(), max_pixels=Settings().max_image_pixels)

    async def embedded(mode: str):
        client = TritonClient(triton.url, 60, mode)
        await client.open()
        try:
            pipeline = FacePipeline(client, Settings())
            await pipeline.aligned_faces([image])  # learns the layouts
            return (await pipeline.aligned_faces([image]))[0]
        finally:
            await client.close()

    http_faces, shm_faces = asyncio.run(embedded("off")), asyncio.run(embedded("on"))
    np.testing.assert_array_equal(http_faces.faces.boxes, shm_faces.faces.boxes)
    np.testing.assert_array_equal(http_faces.embeddings, shm_faces.embeddings)


def test_a_triton_restart_with_regions_registered_recovers_without_leaking(tmp_path: Path) -> None:
    server = TritonProcess(core_repository(tmp_path / "repo"), tmp_path / "triton.log").start()
    try:
        async def run() -> None:
            client = TritonClient(server.url, 60, "on")
            await client.open()
            try:
                [_, before] = await outputs(client)
                regions = {r.name for r in client.shared_memory_regions}
                assert regions <= registered(server.url)
                server.stop()
                server.start()  # same ports, no regions registered
                assert not registered(server.url)
                # the connection to the old process may fail once; that is an ordinary 503
                with contextlib.suppress(Exception):
                    await client.infer(DETECTOR, canvas())
                [after_first, after] = await outputs(client)
                assert_same(before, after_first)
                assert_same(before, after)
                # the same regions again, registered again: none created, none leaked
                assert {r.name for r in client.shared_memory_regions} == regions
                assert regions <= registered(server.url)
                prefix = client.shared_memory_regions[0].name.rsplit("_", 1)[0]
                assert {p.name for p in SHM_DIR.glob(f"{prefix}_*")} == regions
            finally:
                await client.close()
            assert not registered(server.url)
            assert not list(SHM_DIR.glob(f"{prefix}_*"))

        asyncio.run(run())
    finally:
        server.stop()


OTHER_PROCESS = """
import asyncio, json, sys
import numpy as np
sys.path[:0] = [{root!r}, {tests!r}]
from test_triton_service_shm import canvas, faces
from triton_service import DETECTOR, RECOGNIZER, TritonClient

async def main():
    client = TritonClient({url!r}, 60, "on")
    await client.open()
    try:
        for _ in range(2):
            found = await client.infer(DETECTOR, canvas()) | await client.infer(RECOGNIZER, faces())
        names = [r.name for r in client.shared_memory_regions]
        print(json.dumps({{"names": names, "sums": {{k: float(np.float64(v.sum())) for k, v in found.items()}}}}))
    finally:
        await client.close()

asyncio.run(main())
"""


def test_two_processes_against_one_triton_do_not_collide(triton: TritonProcess) -> None:
    async def run() -> tuple[dict, dict]:
        client = TritonClient(triton.url, 60, "on")
        await client.open()
        try:
            [_, mine] = await outputs(client)
            # A second API process registers its own regions while this one's stay registered.
            script = OTHER_PROCESS.format(root=str(ROOT), tests=str(ROOT / "tests"), url=triton.url)
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", script], capture_output=True,
                                           text=True, timeout=300, cwd=ROOT)
            assert done.returncode == 0, done.stderr[-3000:]
            theirs = json.loads(done.stdout.strip().splitlines()[-1])
            [_, again] = await outputs(client)  # ours still work after theirs came and went
            assert_same(mine, again)
            assert not set(theirs["names"]) & {r.name for r in client.shared_memory_regions}
            return mine, theirs
        finally:
            await client.close()

    mine, theirs = asyncio.run(run())
    assert theirs["names"]
    for name, value in mine.items():
        assert float(np.float64(value.sum())) == pytest.approx(theirs["sums"][name], rel=1e-9, abs=1e-9)

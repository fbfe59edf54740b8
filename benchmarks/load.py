"""Mixed load with gallery writes: no unexpected 5xx, no lost enrollment, bounded memory.

    python benchmarks/load.py [--url http://127.0.0.1:3000] [--seconds 40] [--concurrency 1 4 16 64]

Needs the service running (`make run`) and its API key for the gallery routes: --api-key,
else $FRTRITON_API_KEY, else the file --api-key-file (default data/api_key). Each client loops
over /detect, /embedding, /face-similarity, /identify, GET /identities and enrollments
(POST /identities of LFW photos), for `--seconds` per concurrency level. Afterwards every
enrollment that was answered 201 is read back: one missing is a lost write. Prints, per
level, requests/s, the statuses, the 5xx other than the documented 503 (back-pressure or
Triton unavailable), p50/p99 latency, and the peak memory of the service's processes.
A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from throughput import peak_memory_mb, photo_mix

OPERATIONS = ("detect", "embedding", "similarity", "identify", "list", "enroll")


async def client_loop(
    client: httpx.AsyncClient, photos: list[bytes], people: list[tuple[str, bytes]], offset: int,
    deadline: float, results: list[tuple[str, int, float]], enrolled: list[str],
) -> None:
    step = offset
    while time.perf_counter() < deadline:
        operation = OPERATIONS[step % len(OPERATIONS)]
        photo = photos[step % len(photos)]
        begin = time.perf_counter()
        try:
            if operation == "detect":
                answer = await client.post("/detect", files={"image": ("p.jpg", photo)})
            elif operation == "embedding":
                answer = await client.post("/embedding", files={"image": ("p.jpg", photo)})
            elif operation == "similarity":
                other = photos[(step + 5) % len(photos)]
                answer = await client.post("/face-similarity", files={"image_a": ("a", photo), "image_b": ("b", other)})
            elif operation == "identify":
                answer = await client.post("/identify", files={"image": ("p.jpg", photo)})
            elif operation == "list":
                answer = await client.get("/identities", params={"limit": 10})
            else:
                name, data = people[step % len(people)]
                answer = await client.post("/identities", data={"name": name}, files={"images": ("f.jpg", data)})
                if answer.status_code == 201:
                    enrolled.append(answer.json()["id"])
            status = answer.status_code
        except httpx.HTTPError:
            status = 0  # no answer at all: counted with the unexpected failures
        results.append((operation, status, time.perf_counter() - begin))
        step += 7


async def run_level(args, photos, people, concurrency: int, enrolled: list[str]) -> dict:
    results: list[tuple[str, int, float]] = []
    deadline = time.perf_counter() + args.seconds
    headers = {"X-API-Key": args.api_key}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=120, headers=headers, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(
            client_loop(client, photos, people, i, deadline, results, enrolled) for i in range(concurrency)
        ))
        elapsed = time.perf_counter() - start
    latencies = np.array([r[2] for r in results]) * 1000
    statuses = collections.Counter(r[1] for r in results)
    return {
        "concurrency": concurrency,
        "requests_per_s": len(results) / elapsed,
        "statuses": dict(sorted(statuses.items())),
        "unexpected": sum(n for s, n in statuses.items() if s == 0 or (s >= 500 and s != 503)),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
    }


def lost_writes(args, enrolled: list[str]) -> int:
    headers = {"X-API-Key": args.api_key}
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as client:
        return sum(client.get(f"/identities/{identity}").status_code != 200 for identity in enrolled)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--lfw", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/lfw-devtest")
    parser.add_argument("--seconds", type=float, default=40.0, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--api-key", default=os.environ.get("FRTRITON_API_KEY"), help="X-API-Key of the service")
    parser.add_argument("--api-key-file", type=Path, default=Path("data/api_key"),
                        help="read the key from here when --api-key and FRTRITON_API_KEY are not given")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    if not args.api_key:
        if not args.api_key_file.is_file():
            parser.error(f"no API key: pass --api-key, set FRTRITON_API_KEY or --api-key-file ({args.api_key_file})")
        args.api_key = args.api_key_file.read_text().strip()
    photos = [data for _, data in photo_mix(args.lfw)]
    people = [(p.parent.name, p.read_bytes()) for p in sorted((args.lfw / "deepfunneled").glob("*/*.jpg"))[:200]]
    enrolled: list[str] = []
    levels = [asyncio.run(run_level(args, photos, people, c, enrolled)) for c in args.concurrency]
    lost = lost_writes(args, enrolled)
    memory = peak_memory_mb()
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'unexpected':>10}  statuses")
    for level in levels:
        print(f"{level['concurrency']:>7} {level['requests_per_s']:>7.1f} {level['p50_ms']:>8.1f} "
              f"{level['p99_ms']:>8.1f} {level['unexpected']:>10}  {level['statuses']}")
    print(f"enrollments answered 201: {len(enrolled)}; lost (not found afterwards): {lost}")
    print("peak memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())
          + f"; total {sum(memory.values()):.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"levels": levels, "enrolled": len(enrolled), "lost_writes": lost, "peak_memory_mb": memory}
    (args.out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if lost or any(level["unexpected"] for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())

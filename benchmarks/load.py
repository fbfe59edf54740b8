"""Load: mixed traffic with gallery writes, or an /embedding flood; what is served, what is shed.

    python benchmarks/load.py [--url http://127.0.0.1:3000] [--seconds 40] [--concurrency 1 4 16 64]
    python benchmarks/load.py --workload embedding --concurrency 4 64 512 --seconds 20

Needs the service running (`make run`) and its API key for the gallery routes: --api-key,
else $FRTRITON_API_KEY, else the file --api-key-file (default data/api_key). With `--workload
mixed` (default) each client loops over /detect, /embedding, /face-similarity, /identify,
GET /identities and enrollments (POST /identities of LFW photos); afterwards every enrollment
that was answered 201 is read back: one missing is a lost write. With `--workload embedding`
every client posts photos to /embedding, over a minimal keep-alive HTTP/1.1 client (see
RawConnection) light enough for 512 clients on the service's own two cores. Clients are
closed loops (one request at a time); a 503 is followed by a pause of its Retry-After plus a
random share of it, as a well-behaved client does (`--ignore-retry-after`: retry at once). Meanwhile /ready is
polled every half second and the API process's resident memory (VmRSS, found by the port
it listens on, or --api-pid) is sampled. Prints per level: requests/s, goodput (2xx/s) and its ratio to the goodput at 4
clients (the capacity), the share served, p50/p99 latency of the served requests, the 503s
refused at once (queue full: count, p50/p99/max latency; and apart, those sent after the
first `--settle` seconds, when every client's first request arrived together) and after
waiting (queue timeout),
other unexpected answers, the /ready polls, the API's peak RSS.
A measurement, not a test: no number is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import httpx
import numpy as np
from common import peak_memory_mb, photo_mix
from cpu_split import listening_pid


class Outcome(NamedTuple):
    operation: str
    status: int  # 0: no answer
    seconds: float
    reason: str  # of a 503: queue_full, timeout, unavailable
    began: float  # perf_counter() when sent


OPERATIONS = ("detect", "embedding", "similarity", "identify", "list", "enroll")


def backoff(retry_after: float) -> float:
    """The pause after a 503: its Retry-After, plus up to as much again at random.

    Without the jitter every client refused in the same instant returns in the same instant:
    a herd that fills the queue at once, is mostly refused together, and leaves it idle after.
    """
    return retry_after * (1 + random.random())


async def client_loop(
    client: httpx.AsyncClient, args, photos: list[bytes], people: list[tuple[str, bytes]], offset: int,
    deadline: float, results: list[Outcome], enrolled: list[str],
) -> None:
    step = offset
    while time.perf_counter() < deadline:
        operation = OPERATIONS[step % len(OPERATIONS)]
        photo = photos[step % len(photos)]
        begin = time.perf_counter()
        reason, retry_after = "", 0.0
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
            if status == 503:
                reason = shed_reason_of(answer.content)
                retry_after = float(answer.headers.get("Retry-After", "1"))
        except httpx.HTTPError:
            status = 0  # no answer at all: counted with the unexpected failures
        results.append(Outcome(operation, status, time.perf_counter() - begin, reason, begin))
        step += 7
        if status == 503 and not args.ignore_retry_after:
            await asyncio.sleep(max(0.0, min(backoff(retry_after), deadline - time.perf_counter())))


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client for the /embedding flood.

    httpx spends about a millisecond of CPU per request; at 512 clients on two shared cores
    that made the load generator, not the service, the bottleneck (refusals the server sent
    in 40 ms reached the client seconds later). Requests here are prebuilt bytes and answers
    are parsed just enough: status, Content-Length, Retry-After, Connection, the JSON body.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = self.writer is not None
        try:
            return await self._exchange(raw)
        except (OSError, asyncio.IncompleteReadError):
            if not reused:
                raise
        # The server closed the idle keep-alive connection (uvicorn: after 5 s): once more on a new one.
        return await self._exchange(raw)

    async def _exchange(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(raw)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1]), headers, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def embedding_request(host: str, photo: bytes) -> bytes:
    boundary = "frtritonloadboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /embedding HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def shed_reason_of(body: bytes) -> str:
    """Why a 503 was given: the admission queue full, its timeout, or Triton unavailable."""
    try:
        detail = json.loads(body).get("detail", "")
    except ValueError:
        detail = ""
    if "not admitted within" in detail:
        return "timeout"
    return "queue_full" if "busy" in detail else "unavailable"


async def flood_loop(
    args, requests: list[bytes], offset: int, deadline: float, results: list[Outcome],
    errors: collections.Counter,
) -> None:
    """One closed-loop client of the /embedding flood, on a connection of its own."""
    address = urlsplit(args.url)
    connection = RawConnection(address.hostname, address.port or 80)
    step = offset
    try:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            reason, retry_after = "", 0.0
            try:
                status, headers, body = await connection.request(requests[step % len(requests)])
                if status == 503:
                    reason = shed_reason_of(body)
                    retry_after = float(headers.get("retry-after", "1"))
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
                status = 0
                errors[type(error).__name__] += 1
            results.append(Outcome("embedding", status, time.perf_counter() - begin, reason, begin))
            step += 7
            if status == 503 and not args.ignore_retry_after:
                await asyncio.sleep(max(0.0, min(backoff(retry_after), deadline - time.perf_counter())))
    finally:
        await connection.close()


async def poll_ready(url: str, deadline: float, polls: list[tuple[int, float]]) -> None:
    """GET /ready every half second on a connection of its own."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            try:
                status = (await client.get("/ready")).status_code
            except httpx.HTTPError:
                status = 0
            polls.append((status, time.perf_counter() - begin))
            await asyncio.sleep(0.5)


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


async def sample_rss(pid: int | None, deadline: float, samples: list[float]) -> None:
    while pid is not None and time.perf_counter() < deadline:
        try:
            samples.append(rss_mb(pid))
        except (OSError, StopIteration):
            return
        await asyncio.sleep(0.2)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(np.array(values) * 1000, q)) if values else None


async def run_level(args, photos, people, concurrency: int, enrolled: list[str]) -> dict:
    results: list[Outcome] = []
    polls: list[tuple[int, float]] = []
    rss: list[float] = []
    errors: collections.Counter = collections.Counter()  # no answer at all, by exception
    deadline = time.perf_counter() + args.seconds
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=120, headers=headers, limits=limits) as client:
        if args.workload == "embedding":
            host = urlsplit(args.url).netloc
            prebuilt = [embedding_request(host, photo) for photo in photos]
            loops = [flood_loop(args, prebuilt, i, deadline, results, errors) for i in range(concurrency)]
        else:
            loops = [client_loop(client, args, photos, people, i, deadline, results, enrolled)
                     for i in range(concurrency)]
        start = time.perf_counter()
        await asyncio.gather(poll_ready(args.url, deadline, polls), sample_rss(args.api_pid, deadline, rss), *loops)
        elapsed = time.perf_counter() - start
    statuses = collections.Counter(r.status for r in results)
    served = [r.seconds for r in results if 200 <= r.status < 300]
    at_once = [r.seconds for r in results if r.reason == "queue_full"]
    # after the first `--settle` seconds: without the stampede of every client's first request at once
    settled = [r.seconds for r in results if r.reason == "queue_full" and r.began >= start + args.settle]
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "requests_per_s": len(results) / elapsed,
        "goodput_per_s": len(served) / elapsed,
        "served_share": len(served) / max(1, len(results)),
        "statuses": dict(sorted(statuses.items())),
        "shed_queue_full": len(at_once),
        "shed_timeout": sum(r.reason == "timeout" for r in results),
        "unexpected": sum(n for s, n in statuses.items() if s == 0 or (s >= 500 and s != 503)),
        "p50_ms": percentile(served, 50),
        "p99_ms": percentile(served, 99),
        "shed_at_once_p50_ms": percentile(at_once, 50),
        "shed_at_once_p99_ms": percentile(at_once, 99),
        "shed_at_once_max_ms": max(at_once) * 1000 if at_once else None,
        "shed_at_once_settled": len(settled),
        "shed_at_once_settled_p50_ms": percentile(settled, 50),
        "shed_at_once_settled_p99_ms": percentile(settled, 99),
        "ready_polls": len(polls),
        "ready_not_200": sum(status != 200 for status, _ in polls),
        "ready_max_ms": max(t for _, t in polls) * 1000 if polls else None,
        "api_rss_peak_mb": max(rss) if rss else None,
        "errors": dict(errors),
    }


def lost_writes(args, enrolled: list[str]) -> int:
    headers = {"X-API-Key": args.api_key}
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as client:
        return sum(client.get(f"/identities/{identity}").status_code != 200 for identity in enrolled)


def number(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_levels(levels: list[dict]) -> None:
    capacity = next((level["goodput_per_s"] for level in levels if level["concurrency"] == 4), None)
    columns = [  # (heading, width, cell of a level)
        ("clients", 7, lambda v: str(v["concurrency"])),
        ("req/s", 6, lambda v: f"{v['requests_per_s']:.1f}"),
        ("good/s", 6, lambda v: f"{v['goodput_per_s']:.1f}"),
        ("x cap", 5, lambda v: number(v["goodput_per_s"] / capacity if capacity else None, ".2f")),
        ("served", 7, lambda v: f"{v['served_share']:.1%}"),
        ("p50 ms", 7, lambda v: number(v["p50_ms"])),
        ("p99 ms", 7, lambda v: number(v["p99_ms"])),
        ("503 at once: n p50/p99/max ms", 30, lambda v: f"{v['shed_queue_full']} {number(v['shed_at_once_p50_ms'])}/"
         f"{number(v['shed_at_once_p99_ms'])}/{number(v['shed_at_once_max_ms'])}"),
        ("settled: n p50/p99", 18, lambda v: f"{v['shed_at_once_settled']} "
         f"{number(v['shed_at_once_settled_p50_ms'])}/{number(v['shed_at_once_settled_p99_ms'])}"),
        ("503 wait", 8, lambda v: str(v["shed_timeout"])),
        ("unexp", 5, lambda v: str(v["unexpected"])),
        ("ready ok", 9, lambda v: f"{v['ready_polls'] - v['ready_not_200']}/{v['ready_polls']}"),
        ("ready max", 9, lambda v: number(v["ready_max_ms"])),
        ("RSS MB", 6, lambda v: number(v["api_rss_peak_mb"])),
    ]
    print(" ".join(f"{heading:>{width}}" for heading, width, _ in columns) + "  statuses")
    for level in levels:
        cells = " ".join(f"{cell(level):>{width}}" for _, width, cell in columns)
        print(f"{cells}  {level['statuses']}" + (f" errors {level['errors']}" if level["errors"] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--lfw", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/lfw-devtest")
    parser.add_argument("--workload", choices=("mixed", "embedding"), default="mixed")
    parser.add_argument("--seconds", type=float, default=40.0, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--ignore-retry-after", action="store_true", help="retry a 503 at once")
    parser.add_argument("--api-pid", type=int, help="the API process (default: the one listening on --url's port)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="503s sent after this many seconds of a level are also reported apart")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between levels, for the queue to drain")
    parser.add_argument("--api-key", default=os.environ.get("FRTRITON_API_KEY"), help="X-API-Key of the service")
    parser.add_argument("--api-key-file", type=Path, default=Path("data/api_key"),
                        help="read the key from here when --api-key and FRTRITON_API_KEY are not given")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args(argv)
    if not args.api_key and args.api_key_file.is_file():
        args.api_key = args.api_key_file.read_text().strip()
    if args.api_pid is None:
        args.api_pid = listening_pid(urlsplit(args.url).port or 80)
    photos = [data for _, data in photo_mix(args.lfw)]
    people = [(p.parent.name, p.read_bytes()) for p in sorted((args.lfw / "deepfunneled").glob("*/*.jpg"))[:200]]
    enrolled: list[str] = []
    levels = []
    for index, concurrency in enumerate(args.concurrency):
        if index:
            time.sleep(args.pause)
        levels.append(asyncio.run(run_level(args, photos, people, concurrency, enrolled)))
    lost = lost_writes(args, enrolled) if enrolled else 0
    memory = peak_memory_mb()
    print(f"workload {args.workload}, {args.seconds:g} s per level, "
          f"{'503s retried at once' if args.ignore_retry_after else '503s retried after their Retry-After'}")
    print_levels(levels)
    if args.workload == "mixed":
        print(f"enrollments answered 201: {len(enrolled)}; lost (not found afterwards): {lost}")
    print("peak memory (VmHWM, MB, every such process on the machine): "
          + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()) + f"; total {sum(memory.values()):.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"workload": args.workload, "ignore_retry_after": args.ignore_retry_after, "levels": levels,
              "enrolled": len(enrolled), "lost_writes": lost, "peak_memory_mb": memory}
    (args.out / f"load_{args.workload}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if lost or any(level["unexpected"] for level in levels) else 0


if __name__ == "__main__":
    sys.exit(main())

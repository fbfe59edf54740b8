"""The admission queue (middleware.AdmissionQueue) in front of a fake app, step by step.

No server and no clock in the assertions: the fake app holds each request until the test
lets it go, so who is admitted, who waits and who is refused follows from the order of
events alone. The one timeout used is waited for, never measured.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine

import pytest
from prometheus_client import REGISTRY
from starlette.types import Message, Receive, Scope, Send

from api.middleware import RETRY_AFTER_MAX_S, AdmissionQueue, RequestId

BODY = b"--boundary\r\n...an upload...\r\n"


class FakeApp:
    """Records the order requests enter; each limited request stays until its gate opens."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["test_name"]
        self.entered.append(name)
        if scope["path"] == "/embedding":
            await self.gate(name).wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


class Call:
    """One request through the middleware: what it received, what it was sent."""

    def __init__(
        self, app: Callable[..., Coroutine], name: str, path: str = "/embedding",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.name = name
        self.reads = 0  # receive() calls: a waiting request must not read its body
        self.sent: list[Message] = []
        if headers is None:
            headers = [(b"content-length", str(len(BODY)).encode())]
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "test_name": name}
        self.task = asyncio.create_task(app(scope, self.receive, self.send))

    async def receive(self) -> Message:
        self.reads += 1
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return {k.decode(): v.decode() for k, v in start["headers"]}

    @property
    def detail(self) -> str:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body"))[
            "detail"
        ]


async def settle() -> None:
    """Let every runnable task run until it blocks."""
    for _ in range(20):
        await asyncio.sleep(0)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def queue(fake: FakeApp, limit: int, queue_length: int, timeout_s: float = 60, **kwargs) -> AdmissionQueue:
    return AdmissionQueue(fake, limit=limit, queue_length=queue_length, timeout_s=timeout_s,
                          max_body_bytes=1 << 20, **kwargs)


def test_waiting_requests_are_admitted_in_arrival_order_and_read_nothing_before() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=2, queue_length=4)
        depth_before = metric("frtriton_admission_queue_depth")
        calls = [Call(guard, name) for name in "ABCDEF"]
        await settle()
        assert fake.entered == ["A", "B"]
        assert [c.status for c in calls] == [None] * 6  # four wait, nobody refused
        assert metric("frtriton_admission_queue_depth") - depth_before == 4
        assert [c.reads for c in calls[2:]] == [0, 0, 0, 0]  # bodies stay unread while waiting
        fake.gate("B").set()  # a slot frees: the oldest waiter gets it
        await settle()
        assert fake.entered == ["A", "B", "C"]
        late = Call(guard, "G")  # arrives while others wait: it queues behind them, never overtakes
        for name in "ACDEF":
            fake.gate(name).set()
            await settle()
        fake.gate("G").set()
        await asyncio.gather(*(c.task for c in [*calls, late]))
        assert fake.entered == ["A", "B", "C", "D", "E", "F", "G"]
        assert all(c.status == 200 for c in [*calls, late])
        assert guard.active == 0 and not guard.waiting
        assert metric("frtriton_admission_queue_depth") == depth_before

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once_with_retry_after_before_reading_a_declared_body() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = RequestId(queue(fake, limit=1, queue_length=2))
        shed_before = metric("frtriton_admission_shed_total", reason="queue_full")
        holders = [Call(guard, name) for name in "ABC"]  # one working, two waiting: the queue is full
        await settle()
        refused = Call(guard, "D")
        await asyncio.wait_for(refused.task, 5)  # answered while every slot is still held
        assert refused.status == 503 and "busy" in refused.detail
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-request-id"]  # RequestId still marks the answer
        # Answered before its body is read: the server discards what is left of it and keeps the
        # connection (tests/api/test_reliability.py checks that on a real server).
        assert refused.reads == 0
        assert "connection" not in refused.headers
        assert fake.entered == ["A"]
        assert metric("frtriton_admission_shed_total", reason="queue_full") - shed_before == 1
        for name in "ABC":
            fake.gate(name).set()
        await asyncio.gather(*(c.task for c in holders))
        assert [c.status for c in holders] == [200, 200, 200]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("headers", "reads", "closes"),
    [
        ([(b"transfer-encoding", b"chunked")], 1, False),  # length unknown: read and dropped
        ([(b"content-length", b"not-a-number")], 1, False),  # malformed: treated as unknown
        ([(b"content-length", str(2 << 20).encode())], 0, True),  # above the body limit: closed
        ([], 0, False),  # no body at all
    ],
    ids=["chunked", "malformed-length", "declared-too-large", "no-body"],
)
def test_a_refused_body_of_unknown_or_excessive_length_is_drained_or_its_connection_closed(
    headers: list[tuple[bytes, bytes]], reads: int, closes: bool
) -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=0)
        holder = Call(guard, "A")
        await settle()
        refused = Call(guard, "B", headers=headers)
        await asyncio.wait_for(refused.task, 5)
        assert refused.status == 503 and refused.reads == reads
        assert (refused.headers.get("connection") == "close") is closes
        fake.gate("A").set()
        await holder.task

    asyncio.run(scenario())


def test_a_request_not_admitted_within_the_timeout_gets_503_and_leaves_the_queue() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=4, timeout_s=0.05)
        shed_before = metric("frtriton_admission_shed_total", reason="timeout")
        holder = Call(guard, "A")  # never released during the wait: B cannot be admitted
        await settle()
        waiter = Call(guard, "B")
        await asyncio.wait_for(waiter.task, 5)
        assert waiter.status == 503 and "not admitted within 0.05 s" in waiter.detail
        assert int(waiter.headers["retry-after"]) >= 1
        assert waiter.reads == 0  # not read while waiting, nor to refuse it
        assert fake.entered == ["A"] and not guard.waiting
        assert metric("frtriton_admission_shed_total", reason="timeout") - shed_before == 1
        fake.gate("A").set()
        await holder.task
        assert guard.active == 0

    asyncio.run(scenario())


def test_retry_after_is_the_backlog_over_the_observed_service_rate() -> None:
    async def scenario() -> None:
        now = [0.0]
        fake = FakeApp()
        guard = queue(fake, limit=2, queue_length=4, clock=lambda: now[0])
        assert guard.retry_after_s() == 1  # nothing measured yet
        first = Call(guard, "first")
        await settle()
        now[0] = 3.0  # it held its slot 3 s
        fake.gate("first").set()
        await first.task
        assert guard.service_s == 3.0
        calls = [Call(guard, f"c{i}") for i in range(6)]  # 2 working + 4 waiting
        await settle()
        refused = Call(guard, "refused")
        await refused.task
        # 6 requests ahead, served 2 at a time, 3 s each: 9 s
        assert refused.status == 503 and refused.headers["retry-after"] == "9"
        assert "retry after 9 s" in refused.detail
        guard.service_s = 1e-3
        assert guard.retry_after_s() == 1  # never below 1 s
        guard.service_s = 1e6
        assert guard.retry_after_s() == RETRY_AFTER_MAX_S  # nor above the cap
        for call in calls:
            fake.gate(call.name).set()
        await asyncio.gather(*(c.task for c in calls))

    asyncio.run(scenario())


def test_a_cancelled_waiter_frees_its_place_and_never_takes_a_slot() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=1)
        holder = Call(guard, "A")
        await settle()
        cancelled = Call(guard, "B")
        await settle()
        full = Call(guard, "C")
        await full.task
        assert full.status == 503  # B holds the only place in the queue
        cancelled.task.cancel()  # e.g. the server cancels the request's task
        with pytest.raises(asyncio.CancelledError):
            await cancelled.task
        assert not guard.waiting
        after = Call(guard, "D")  # the place is free again
        await settle()
        assert after.status is None and len(guard.waiting) == 1
        fake.gate("A").set()
        await settle()
        assert fake.entered == ["A", "D"]  # B never ran
        fake.gate("D").set()
        await asyncio.gather(holder.task, after.task)
        assert guard.active == 0 and not guard.waiting

    asyncio.run(scenario())


def test_a_waiter_cancelled_just_as_it_is_handed_a_slot_passes_the_slot_on() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=2)
        holder, unlucky, next_in_line = Call(guard, "A"), Call(guard, "B"), Call(guard, "C")
        await settle()
        [turn_b, _] = guard.waiting
        handed = []

        def cancel_b() -> None:  # runs after A has finished and handed B the slot, before B resumes
            handed.append(turn_b.done() and turn_b.result())
            unlucky.task.cancel()

        fake.gate("A").set()  # A finishes in its next step ...
        asyncio.get_running_loop().call_soon(cancel_b)  # ... and this runs right after that step
        await settle()
        assert handed == [True], "the race was not reproduced"
        assert unlucky.task.cancelled()
        assert fake.entered == ["A", "C"] and guard.active == 1
        fake.gate("C").set()
        await asyncio.gather(holder.task, next_in_line.task)
        assert guard.active == 0 and not guard.waiting

    asyncio.run(scenario())


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/ui/", "/"])
def test_probes_docs_and_the_page_bypass_a_saturated_queue(path: str) -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=0)
        holder = Call(guard, "A")
        await settle()
        refused = Call(guard, "B")
        await refused.task
        assert refused.status == 503
        probe = Call(guard, "probe", path=path)
        await asyncio.wait_for(probe.task, 5)
        assert probe.status == 200 and probe.reads == 0
        fake.gate("A").set()
        await holder.task

    asyncio.run(scenario())


def test_background_work_takes_its_turn_in_the_same_fifo_and_waits_past_the_timeout() -> None:
    """A video job's batch (`slot()`) queues behind waiting requests, is not refused after the
    requests' timeout, and a request arriving after it waits behind it."""

    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=4, timeout_s=0.05)
        holder, waiter = Call(guard, "A"), Call(guard, "B")
        await settle()
        order: list[str] = []

        async def batch() -> None:
            async with guard.slot():
                order.append("batch")

        background = asyncio.create_task(batch())
        await asyncio.sleep(0.1)  # past the requests' timeout: B is refused, the batch still waits
        assert waiter.status == 503 and not background.done() and len(guard.waiting) == 1
        fake.gate("A").set()
        await background
        assert order == ["batch"] and guard.active == 0 and not guard.waiting
        await holder.task

    asyncio.run(scenario())


def test_background_work_cancelled_while_waiting_leaves_no_trace() -> None:
    async def scenario() -> None:
        fake = FakeApp()
        guard = queue(fake, limit=1, queue_length=4)
        holder = Call(guard, "A")
        await settle()

        async def batch() -> None:
            async with guard.slot():
                raise AssertionError("never admitted")

        background = asyncio.create_task(batch())
        await settle()
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
        assert not guard.waiting and guard.active == 1
        fake.gate("A").set()
        await holder.task
        assert guard.active == 0

    asyncio.run(scenario())

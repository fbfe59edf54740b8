"""ASGI guards in front of every route, and the logging that goes with them.

* `RequestId`: every request gets an id (the client's `X-Request-ID` when it is a sane
  token, else a new one); it is on the response and on every log line written while
  the request runs, so a client's report can be found in the logs.
* `AdmissionQueue`: back-pressure. At most `limit` requests are worked on at once; up to
  `queue_length` more wait their turn (FIFO, at most `timeout_s`), the rest get an
  immediate 503 with a computed `Retry-After`: a bounded queue, not an unbounded one whose
  decoded photos would grow memory without limit.
* `BodySizeLimit`: request bodies above the limit are refused before they are read.

Log lines carry the method, path, status and messages written for the client; never an
image, an embedding or a key (the access log has no headers and no bodies).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry.logs import request_id
from telemetry.metrics import ACTIVE, QUEUE_DEPTH, QUEUE_WAIT_SECONDS, SHED

log = logging.getLogger("frtriton")
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # anything else (spaces, CR/LF, long) is replaced

# Cheap routes that must answer even when the service is saturated (probes, docs, the page).
UNLIMITED_PATHS = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/ui")
# Without it the server answers 413 but keeps reading (and discarding) the rest of the body.
CLOSE_CONNECTION = {"Connection": "close"}
RETRY_AFTER_MAX_S = 60  # a computed Retry-After never asks a client to stay away longer


def _is_http(scope: Scope) -> bool:
    return scope["type"] == "http"


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length (0 without a body), or None when it is chunked or malformed."""
    headers = dict(scope.get("headers", []))
    if b"transfer-encoding" in headers:
        return None
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return None


class RequestId:
    """Put a request id on the response and in the logging context of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_http(scope):
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        value = offered if _CLIENT_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id.set(value)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", value.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # A bug, not a client's mistake: logged here, with the id, and answered with it.
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await JSONResponse({"detail": "internal server error"}, status_code=500)(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class AdmissionQueue:
    """At most `limit` requests in the app at once; up to `queue_length` more wait, in FIFO order.

    A waiting request is admitted when a slot frees (slots are handed to the oldest waiter,
    so nobody overtakes), or answered 503 after `timeout_s`; with the queue full, a request
    is refused at once. Probes, docs and the demo page pass straight through.

    Nothing is read from a request before it is admitted: its body stays in the server
    (uvicorn reads ahead its 64 KiB high-water mark plus at most one 256 KiB socket read, then
    stops reading the socket), so the waiting requests hold at most `queue_length` x 320 KiB,
    never their uploads. A refused request's
    body is read and dropped chunk by chunk, so the client sees the answer.

    `Retry-After` is computed from the observed service time: the backlog ahead of a new
    request (working + waiting) divided by the service rate `limit / mean service time`
    (Little's law for a full house), rounded up, between 1 and `RETRY_AFTER_MAX_S`.

    One event loop runs every request, so the counters need no lock.
    """

    SERVICE_TIME_WEIGHT = 0.1  # of the newest request in the running mean of service times

    def __init__(
        self, app: ASGIApp, limit: int, queue_length: int, timeout_s: float, max_body_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limit = limit
        self.queue_length = queue_length
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.active = 0  # admitted requests not finished yet
        self.waiting: collections.deque[asyncio.Future[bool]] = collections.deque()  # oldest first
        self.service_s: float | None = None  # running mean of the time an admitted request holds a slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if not _is_http(scope) or path == "/" or path.startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        if self.active < self.limit and not self.waiting:
            self.active += 1
        elif len(self.waiting) >= self.queue_length:
            SHED.labels("queue_full").inc()
            detail = f"the service is busy ({self.active} requests in progress, {len(self.waiting)} waiting)"
            await self._refuse(detail, scope, receive, send)
            return
        elif not await self._wait():
            SHED.labels("timeout").inc()
            detail = f"the service is busy: not admitted within {self.timeout_s:g} s"
            await self._refuse(detail, scope, receive, send)
            return
        ACTIVE.inc()
        begin = self.clock()
        try:
            await self.app(scope, receive, send)
        finally:
            ACTIVE.dec()
            self._observe(self.clock() - begin)
            self._release()

    def around(self, app: ASGIApp) -> AdmissionQueue:
        """This guard in front of `app`: for `add_middleware(guard.around)`, when the guard was made
        beforehand (with `app=None`) so that work which is not a request can share its slots."""
        self.app = app
        return self

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for work that is not an HTTP request (a video job's batch of frames).

        It waits its turn in the same FIFO as the requests, without their timeout (background
        work has no client waiting on a socket), and gives the slot back when the block ends, so
        a long video takes its turn with the image routes and never starves them.
        """
        if self.active < self.limit and not self.waiting:
            self.active += 1
        else:
            await self._wait(timeout_s=None)
        try:
            yield
        finally:
            self._release()

    async def _wait(self, timeout_s: float | None = -1.0) -> bool:
        """Wait for a slot: True once admitted (the slot is ours), False after the timeout (None: no timeout)."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self.waiting.append(turn)
        QUEUE_DEPTH.inc()
        wait_s = self.timeout_s if timeout_s == -1.0 else timeout_s
        timer = loop.call_later(wait_s, self._expire, turn) if wait_s is not None else None
        begin = self.clock()
        try:
            admitted = await turn
        except asyncio.CancelledError:  # the request's task was cancelled while it waited
            if turn.done() and not turn.cancelled() and turn.result():
                self._release()  # handed a slot in the same instant: pass it on
            else:
                self._leave(turn)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if admitted:
            QUEUE_WAIT_SECONDS.observe(self.clock() - begin)
        return admitted

    def _expire(self, turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            self._leave(turn)
            turn.set_result(False)

    def _leave(self, turn: asyncio.Future[bool]) -> None:
        if turn in self.waiting:
            self.waiting.remove(turn)
            QUEUE_DEPTH.dec()

    def _release(self) -> None:
        """A slot is free: hand it to the oldest waiter, else leave it empty."""
        while self.waiting:
            turn = self.waiting.popleft()
            QUEUE_DEPTH.dec()
            if not turn.done():
                turn.set_result(True)  # `active` is unchanged: the slot changes hands
                return
        self.active -= 1

    def _observe(self, seconds: float) -> None:
        if self.service_s is None:
            self.service_s = seconds
        else:
            self.service_s += self.SERVICE_TIME_WEIGHT * (seconds - self.service_s)

    def retry_after_s(self) -> int:
        """Seconds until the requests ahead of a new one are likely served (1 when nothing is known)."""
        if not self.service_s:
            return 1
        backlog = self.active + len(self.waiting)
        return min(RETRY_AFTER_MAX_S, max(1, math.ceil(backlog * self.service_s / self.limit)))

    async def _refuse(self, detail: str, scope: Scope, receive: Receive, send: Send) -> None:
        retry_after = str(self.retry_after_s())
        headers = {"Retry-After": retry_after}
        declared = _declared_length(scope)
        if declared is None:  # chunked or malformed: read what fits, close the connection if more
            if not await self._drain(receive):
                headers |= CLOSE_CONNECTION
        elif declared > self.max_body_bytes:  # never to be read: not worth reading to drop it
            headers |= CLOSE_CONNECTION
        # A declared body within the limit is answered at once, before it is read: uvicorn (both
        # its HTTP protocols) reads on and discards what is left of a request whose response is
        # complete, and keeps the connection. So the client still gets its 503, not a broken
        # pipe, but without the event-loop round trips of reading it here: when hundreds of
        # uploads arrive together, those round trips were most of a refusal's latency.
        body = {"detail": f"{detail}; retry after {retry_after} s"}
        await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)

    async def _drain(self, receive: Receive) -> bool:
        """Read and drop the request body (at most `max_body_bytes`); False if it was larger.

        A client still sending its upload when the 503 comes and the connection closes gets
        a broken pipe instead of the answer; reading the body is cheap next to the work
        refused (nothing is decoded, nothing is kept).
        """
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                return False
            if not message.get("more_body", False):
                return True


class BodySizeLimit:
    """Refuse request bodies above `max_bytes` before they are read into memory.

    A declared Content-Length is checked up front; a chunked body is counted as it
    streams and cut off with 413 as soon as it passes the limit. Either way the 413
    closes the connection, so a client streaming gigabytes is cut off, not drained.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}  # exact paths with their own limit (POST /videos: MAX_VIDEO_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_http(scope):
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"detail": self._message(limit)}, status_code=413, headers=CLOSE_CONNECTION)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=self._message(limit), headers=CLOSE_CONNECTION)
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"request body larger than {limit} bytes"

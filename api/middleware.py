"""ASGI guards in front of every route.

* `RequestId`: every request gets an id (the client's `X-Request-ID` when it is a sane
  token, else a new one); it is on the response and on every log line written while
  the request runs, so a client's report can be found in the logs.
* `InFlightLimit`: back-pressure. At most `limit` requests are worked on at once; the
  next ones get an immediate 503 with `Retry-After` instead of an unbounded queue whose
  decoded photos would grow memory without limit.
* `BodySizeLimit`: request bodies above the limit are refused before they are read.

The request id reaches every log line through `telemetry.logs.request_id`.
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry.logs import request_id

log = logging.getLogger("frtriton")
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # anything else (spaces, CR/LF, long) is replaced

# Cheap routes that must answer even when the service is saturated (probes, docs, the page).
UNLIMITED_PATHS = ("/health", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json", "/ui")
# Without it the server answers 413 but keeps reading (and discarding) the rest of the body.
CLOSE_CONNECTION = {"Connection": "close"}


def _is_http(scope: Scope) -> bool:
    return scope["type"] == "http"


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


class InFlightLimit:
    """At most `limit` requests in the app at once (probes, docs and the demo page excepted).

    One event loop admits requests one at a time, so a plain counter is exact.
    """

    def __init__(self, app: ASGIApp, limit: int, max_body_bytes: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self.retry_after = str(retry_after_s)
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if not _is_http(scope) or path == "/" or path.startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            detail = f"the service is busy ({self.limit} requests in progress); retry after {self.retry_after} s"
            headers = {"Retry-After": self.retry_after}
            if not await self._drain(receive):
                headers |= CLOSE_CONNECTION
            await JSONResponse({"detail": detail}, status_code=503, headers=headers)(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


    async def _drain(self, receive: Receive) -> bool:
        """Read and drop the request body (at most `max_body_bytes`); False if it was larger.

        A client still sending its upload when the 503 comes and the connection closes gets
        a broken pipe instead of the answer; reading the body is cheap next to the work
        refused (nothing is decoded).
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

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_http(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message()}, status_code=413, headers=CLOSE_CONNECTION)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=self._message(), headers=CLOSE_CONNECTION)
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

"""Prometheus metrics of the API (GET /metrics); Triton's own stay on its port 8002.

A leaf module: the HTTP middleware, the pipeline (faces found) and the Triton client
(call latency per model) record into these; nothing here imports the service.

Labels are bounded: the route *template* (`/identities/{identity_id}`, never the id), the
method, the status code, the model name. A request answered before routing (the admission
queue's 503, the body limit's 413) is labelled by the template its method and path match in
the app's `RouteTable`; "unmatched" only when no route would have taken it.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("frtriton")

# Requests take 20 ms to a few seconds under load; Triton calls 1 ms to hundreds.
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TRITON_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0)

REQUESTS = Counter("frtriton_http_requests", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "frtriton_http_request_duration_seconds", "time to answer, by route", ["method", "route"],
    buckets=REQUEST_BUCKETS,
)
IN_FLIGHT = Gauge("frtriton_http_requests_in_flight", "HTTP requests being worked on or waiting")
# The admission queue (middleware.AdmissionQueue): requests admitted, waiting, and shed.
ACTIVE = Gauge("frtriton_admission_active", "requests admitted past the admission queue and not finished")
QUEUE_DEPTH = Gauge("frtriton_admission_queue_depth", "requests waiting for a slot (at most QUEUE_LENGTH)")
QUEUE_WAIT_SECONDS = Histogram(
    "frtriton_admission_wait_seconds", "how long admitted requests waited for a slot", buckets=REQUEST_BUCKETS,
)
SHED = Counter(
    "frtriton_admission_shed", "requests answered 503 by the admission queue: queue_full (at once) or timeout",
    ["reason"],
)
for _reason in ("queue_full", "timeout"):
    SHED.labels(_reason)  # both series exist (at 0) before the first shed
FACES_DETECTED = Counter("frtriton_faces_detected", "faces the detector returned, over all images")
TRITON_SECONDS = Histogram(
    "frtriton_triton_request_duration_seconds", "one inference call to Triton, by model and outcome",
    ["model", "outcome"], buckets=TRITON_BUCKETS,
)
LIVENESS_CHECKS = Counter(
    "frtriton_liveness_checks", "faces checked by the anti-spoofing model, by verdict", ["result"]
)
GALLERY_IDENTITIES = Gauge("frtriton_gallery_identities", "people enrolled in the gallery")
GALLERY_FACES = Gauge("frtriton_gallery_faces", "face samples stored in the gallery")
GALLERY_INDEX = Gauge(
    "frtriton_gallery_index", "the gallery's search index in use (1), and whether it came from its saved file",
    ["index", "library", "loaded_from_file"],
)
GALLERY_GENERATION = Gauge("frtriton_gallery_index_generation", "database generation the search index reflects")


def set_gallery_index(status: dict) -> None:
    """One series for the index in use (labels change when it does: the old series goes)."""
    GALLERY_INDEX.clear()
    GALLERY_INDEX.labels(str(status["index"]), str(status["library"]), str(status["loaded_from_file"]).lower()).set(1)
    if status.get("generation") is not None:
        GALLERY_GENERATION.set(status["generation"])

UNMATCHED_ROUTE = "unmatched"  # 404s and static files: one label, not one per path tried
OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus' text format and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


class RouteTable:
    """The app's route templates (`/identities/{identity_id}`) with their methods, as regexes.

    For the requests the router never saw: a middleware in front of it (the admission queue)
    answered them. They are matched the way the router would have matched them, in its order:
    the first template whose path and method match, else the first whose path matches (the
    router's 405), else none.
    """

    def __init__(self, routes: Iterable[tuple[str, Collection[str]]]) -> None:
        self.routes: list[tuple[re.Pattern[str], str, frozenset[str]]] = []
        seen: set[tuple[str, frozenset[str]]] = set()
        for template, methods in routes:
            allowed = frozenset(m.upper() for m in methods)
            if "GET" in allowed:
                allowed |= {"HEAD"}  # as Starlette's routes answer HEAD wherever they answer GET
            if (template, allowed) not in seen:
                seen.add((template, allowed))
                self.routes.append((compile_path(template)[0], template, allowed))

    @classmethod
    def of(cls, app: Any) -> RouteTable:
        """The templates of a FastAPI app: its OpenAPI paths, and its own routes (the docs) besides.

        Only public interfaces: `app.openapi()` lists every operation of the included routers,
        whatever FastAPI keeps them in; `app.routes` adds the routes outside the schema. Not
        seen: an included router's routes left out of the schema (here only `GET /`, which the
        queue never refuses); a `{name:path}` parameter is one segment in the schema's paths.
        """
        routes: list[tuple[str, Collection[str]]] = []
        openapi = getattr(app, "openapi", None)
        try:
            paths = openapi().get("paths", {}) if callable(openapi) else {}
        except Exception:  # a schema that cannot be built: the app's own routes still count
            log.warning("no OpenAPI schema to label unrouted requests by; they may count as %r", UNMATCHED_ROUTE,
                        exc_info=True)
            paths = {}
        for template, operations in paths.items():
            routes.append((template, [m for m in operations if m in OPENAPI_METHODS]))
        for route in getattr(app, "routes", []):
            path, methods = getattr(route, "path", None), getattr(route, "methods", None)
            if isinstance(path, str) and methods:
                routes.append((path, methods))
        return cls(routes)

    def label(self, method: str, path: str) -> str:
        """The template `method path` falls under, or UNMATCHED_ROUTE."""
        partial = None
        for regex, template, allowed in self.routes:
            if regex.match(path):
                if method.upper() in allowed:
                    return template
                partial = partial or template
        return partial or UNMATCHED_ROUTE


class HttpMetrics:
    """Counts and times every HTTP request by route template, method and status.

    The router names the route of what it handled (`scope["route"]`); a request answered in
    front of it is looked up in the app's RouteTable, built on the first such request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.table: RouteTable | None = None

    def route_of(self, scope: Scope) -> str:
        route = getattr(scope.get("route"), "path", None)
        if isinstance(route, str):
            return route
        if self.table is None:
            self.table = RouteTable.of(scope.get("app"))
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        return self.table.label(scope["method"], path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app fails before answering
        begin = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            IN_FLIGHT.dec()
            route = self.route_of(scope)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - begin)

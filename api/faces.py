"""Routes on faces: detect, embed the main face, compare two photos."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Response, UploadFile

from api.bodies import JsonOrFormRoute
from api.dependencies import FacesDep, LivenessDep, SettingsDep, read_image
from api.error_status import status_for
from api.schemas import (
    ERROR_RESPONSES,
    INCLUDE_ANNOTATED_DESCRIPTION,
    LIVENESS_ERROR_RESPONSES,
    OPENAPI_JPEG_RESPONSE,
    DetectedFace,
    DetectResponse,
    EmbeddingResponse,
    EmbeddingsResponse,
    Error,
    FailedImage,
    ImageError,
    LivenessResponse,
    SimilarityResponse,
    Unprocessable,
    faces_json,
    liveness_json,
    recognizer_json,
)
from errors import FaceServiceError
from imaging.draw import (
    JPEG_MEDIA_TYPE,
    KNOWN_COLOUR,
    PNG_MEDIA_TYPE,
    UNKNOWN_COLOUR,
    annotated_jpeg,
    data_url,
    encode_png,
)
from usecases.faces import Embedded

router = APIRouter(tags=["faces"], route_class=JsonOrFormRoute)  # images as a form or as JSON
LivenessQuery = Annotated[
    bool, Query(description="also check every face with the anti-spoofing model (503 when it is not installed)")
]


def png_data_url(crop) -> str:
    return data_url(encode_png(crop), PNG_MEDIA_TYPE)


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Find every face: box, score, five landmarks, head pose and enrollment quality",
    responses={**LIVENESS_ERROR_RESPONSES, **OPENAPI_JPEG_RESPONSE},
    response_model_exclude_none=True,  # capped/max_faces/liveness only when there
)
async def detect(
    faces: FacesDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP…")],
    annotate: Annotated[bool, Query(description="answer with the photo as a JPEG, faces drawn")] = False,
    liveness: LivenessQuery = False,
    include_annotated: Annotated[bool, Query(description=INCLUDE_ANNOTATED_DESCRIPTION)] = False,
):
    pixels = await read_image(image, settings)
    found = await faces.detect(pixels, liveness=liveness)
    jpeg = None
    if annotate or include_annotated:
        labels = colours = None
        if found.liveness is not None:
            labels = [f"{'live' if v.is_real else 'spoof'} {v.real_score:.2f}" for v in found.liveness]
            colours = [KNOWN_COLOUR if v.is_real else UNKNOWN_COLOUR for v in found.liveness]
        jpeg = await asyncio.to_thread(annotated_jpeg, pixels, found.faces, labels, colours)
        if annotate:
            return Response(jpeg, media_type=JPEG_MEDIA_TYPE)
    shaped = faces_json(found.faces, found.attributes, DetectedFace)
    for face, verdict in zip(shaped, found.liveness or [], strict=False):
        face.liveness = liveness_json(verdict)
    return DetectResponse(
        width=pixels.shape[1],
        height=pixels.shape[0],
        faces=shaped,
        capped=True if found.capped else None,
        max_faces=settings.max_faces if found.capped else None,
        annotated=data_url(jpeg, JPEG_MEDIA_TYPE) if jpeg is not None else None,
    )


@router.post(
    "/embedding",
    response_model=EmbeddingResponse,
    summary="Embedding of the main face (the largest face nearest the centre)",
    responses=ERROR_RESPONSES,
)
async def embedding(
    faces: FacesDep, settings: SettingsDep, image: Annotated[UploadFile, File(description="photo with a face")]
):
    return embedding_json(await faces.embed(await read_image(image, settings)))


def embedding_json(embedded: Embedded) -> EmbeddingResponse:
    return EmbeddingResponse(
        embedding=[float(v) for v in embedded.embedding], face=faces_json(embedded.face, [embedded.attributes])[0],
        model=recognizer_json(embedded.model),
    )


BATCH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "a JSON body whose image is not base64 (an image that is not a "
          "decodable image is answered in its place in `results`)"},
    413: {"model": Error, "description": "more than MAX_BATCH_IMAGES images, or a body above the limit"},
    422: {"model": Unprocessable, "description": "no images sent, or a field misnamed"},
    503: ERROR_RESPONSES[503],
}
# Swagger's example of the JSON form (the multipart form stays the default); the images are cut short.
BATCH_JSON_EXAMPLE = {"images": ["/9j/4AAQSkZJRgABAQAAAQABAAD/2wBD", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="]}


@router.post(
    "/embeddings",
    response_model=EmbeddingsResponse,
    summary="Embeddings of the main faces of several photos in one call (one bad photo does not fail the others)",
    responses=BATCH_ERRORS,
    openapi_extra={"requestBody": {"content": {"application/json": {"example": BATCH_JSON_EXAMPLE}}}},
)
async def embeddings(
    faces: FacesDep,
    images: Annotated[
        list[UploadFile], File(description="photos, each embedded as /embedding does (at most MAX_BATCH_IMAGES)")
    ],
):
    results = await faces.embed_each(images)
    return EmbeddingsResponse(results=[
        embedding_json(r) if isinstance(r, Embedded) else image_error(r) for r in results
    ])


def image_error(error: FaceServiceError) -> FailedImage:
    return FailedImage(error=ImageError(status=status_for(error), detail=error.message))


@router.post(
    "/face-similarity",
    response_model=SimilarityResponse,
    summary="Compare the main faces of two photos",
    responses=LIVENESS_ERROR_RESPONSES,
    response_model_exclude_none=True,  # aligned_a/b and liveness_a/b only when asked for
)
async def face_similarity(
    faces: FacesDep,
    settings: SettingsDep,
    image_a: Annotated[UploadFile, File(description="first photo")],
    image_b: Annotated[UploadFile, File(description="second photo")],
    include_aligned: Annotated[
        bool, Query(description="add the two aligned crops the model embedded (aligned_a, aligned_b)")
    ] = False,
    liveness: LivenessQuery = False,
):
    pixels_a, pixels_b = await asyncio.gather(read_image(image_a, settings), read_image(image_b, settings))
    result = await faces.compare(pixels_a, pixels_b, include_aligned, liveness)
    aligned = [None, None]
    if include_aligned:
        aligned = await asyncio.to_thread(lambda: [png_data_url(result.aligned_a), png_data_url(result.aligned_b)])
    return SimilarityResponse(
        similarity=round(result.similarity, 6),
        same_person=result.same_person,
        threshold=result.threshold,
        face_a=faces_json(result.face_a, [result.attributes_a])[0],
        face_b=faces_json(result.face_b, [result.attributes_b])[0],
        aligned_a=aligned[0],
        aligned_b=aligned[1],
        liveness_a=liveness_json(result.liveness_a),
        liveness_b=liveness_json(result.liveness_b),
    )


@router.post(
    "/liveness",
    response_model=LivenessResponse,
    summary="Is the main face live, or a photo of one (print, screen)? Needs the anti-spoofing model",
    responses=LIVENESS_ERROR_RESPONSES,
)
async def liveness_check(
    check: LivenessDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="photo with a face")],
):
    checked = await check.check(await read_image(image, settings))
    return LivenessResponse(
        face=faces_json(checked.face)[0],
        real_score=checked.verdict.real_score,
        is_real=checked.verdict.is_real,
        threshold=checked.threshold,
    )

"""HTTP routes of the gallery: enroll (from photos or from embeddings), list, update, merge, delete people;
identify faces. Verification (`api.verification`) and embedding search (`api.embedding_search`) are
routers of their own on the same terms.

Validation and response shapes only: the work is in `usecases` (enrollment, identification,
people). Every route here needs the `X-API-Key` (`api.dependencies.KeyRequired`, on the router,
so a new route is protected too): changes, the list of everyone enrolled, and identification,
which names the nearest enrolled people even for a stranger. `API_KEY_OPEN=true` lifts it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Response, UploadFile
from pydantic import BaseModel, Field

from api.bodies import JSON_TEXT, JsonOrFormRoute
from api.dependencies import (
    EnrollmentDep,
    IdentificationDep,
    KeyRequired,
    PeopleDep,
    SettingsDep,
    read_image,
)
from api.schemas import (
    ANNOTATED_FIELD_DESCRIPTION,
    INCLUDE_ANNOTATED_DESCRIPTION,
    OPENAPI_JPEG_RESPONSE,
    EnrollmentQuality,
    Error,
    HeadPose,
    Liveness,
    Unprocessable,
    attributes_json,
    liveness_json,
)
from api.vector_schemas import EMBEDDINGS_JSON_TEXT, EXAMPLE_SHA256, EXAMPLE_VECTOR, MODEL_SHA256_DESCRIPTION
from gallery.store import EMBEDDING_DIM, Identity, Match, StoredFace
from imaging.draw import JPEG_MEDIA_TYPE, KNOWN_COLOUR, UNKNOWN_COLOUR, annotated_jpeg, data_url
from usecases.enrollment import Enrolled

# --------------------------------------------------------------------------- schemas
# What each status means on the gallery routes; `error_responses(...)` picks a route's own.
GALLERY_ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": Error, "description": "a body that cannot be parsed (DELETE /identities: confirm=true missing)"},
    401: {"model": Error, "description": "missing or wrong X-API-Key; the detail says where the key is"},
    404: {"model": Error, "description": "no identity with this id (or no face with this id of it)"},
    409: {"model": Error, "description": "the identity's only face: delete the identity instead"},
    413: {"model": Error, "description": "too many images, or an upload above the byte limit"},
    422: {"model": Unprocessable, "description": "no usable face, or a field missing or invalid"},
    503: {"model": Error, "description": "Triton unavailable or timed out (see Retry-After)"},
}
# Every gallery route can answer these (the key check runs first).
KEY_ERRORS: dict[int | str, dict[str, Any]] = {
    401: GALLERY_ERRORS[401],
    429: {"model": Error, "description": "too many wrong X-API-Key values from this address (see Retry-After)"},
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
    face_ids: list[int] = Field(description="ids of the samples this request stored, in the order of the accepted "
                                "images (see GET /identities/{id}/faces)", examples=[[41, 42]])
    rejected: list[Rejected]
    possible_duplicates: list[MatchOut] | None = Field(
        default=None,
        description="enrollment of a new person only: the people already enrolled whom one of the new faces "
        "identifies (similarity at or above IDENTIFY_THRESHOLD, scored as /identify scores), each once with their "
        "best similarity, most similar first; [] when none (with on_duplicate=reject those are a 409 instead)",
        examples=[[{"id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "name": "Ada Lovelace", "similarity": 0.71}]],
    )


class FaceQualityOut(BaseModel):
    sharpness: float | None = Field(description="variance of the Laplacian of the grey 112x112 aligned crop",
                                    examples=[139.2])
    face_size: float | None = Field(description="side in image pixels of the square the aligned crop covers",
                                    examples=[78.4])
    detection_score: float | None = Field(description="the detector's confidence in [0, 1]", examples=[0.87])


class PoseOut(BaseModel):
    yaw: float | None = Field(description="degrees, positive turned towards the image's right", examples=[-4.1])
    pitch: float | None = Field(description="degrees, positive looking down", examples=[2.5])
    roll: float | None = Field(description="degrees, positive clockwise on screen", examples=[0.8])


class FaceSampleOut(BaseModel):
    id: int = Field(examples=[41])
    created_at: str = Field(examples=["2026-11-22T07:00:00.000+00:00"])
    quality: FaceQualityOut = Field(description="measured at enrollment (nulls: stored before they were kept)")
    pose: PoseOut = Field(description="head pose at enrollment (null for samples stored before it was kept)")
    source: str | None = Field(description="the uploaded file's name", examples=["ada1.jpg"])
    has_crop: bool = Field(description="its aligned crop is stored, so it can be re-embedded by another model")


class FaceList(BaseModel):
    faces: list[FaceSampleOut]


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
    pose: HeadPose
    quality: EnrollmentQuality = Field(description="would enrollment take this face (as /detect answers)")
    liveness: Liveness | None = Field(default=None, description="only with liveness=true")


class IdentifyResponse(BaseModel):
    width: int
    height: int
    threshold: float
    faces: list[IdentifiedFace]
    annotated: str | None = Field(default=None, description=ANNOTATED_FIELD_DESCRIPTION)


class Deleted(BaseModel):
    deleted: int


def identity_out(identity: Identity) -> IdentityOut:
    return IdentityOut(
        id=identity.id,
        name=identity.name,
        num_faces=identity.num_faces,
        metadata=identity.metadata,
        created_at=identity.created_at,
    )


def face_out(face: StoredFace) -> FaceSampleOut:
    return FaceSampleOut(
        id=face.id,
        created_at=face.created_at,
        quality=FaceQualityOut(
            sharpness=face.sharpness, face_size=face.face_size, detection_score=face.detection_score
        ),
        pose=PoseOut(yaw=face.yaw, pitch=face.pitch, roll=face.roll),
        source=face.source,
        has_crop=face.has_crop,
    )


def match_out(match: Match) -> MatchOut:
    return MatchOut(id=match.id, name=match.name, similarity=round(match.similarity, 6))


ModelSha256 = Annotated[str | None, Form(max_length=128, description=MODEL_SHA256_DESCRIPTION)]
Images = Annotated[list[UploadFile], File(description="one or more photos, each with exactly one face")]
FaceId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a face sample's id (GET /identities/{id}/faces)")]


def enroll_response(enrolled: Enrolled, new_person: bool = False) -> EnrollResponse:
    identity = enrolled.identity
    return EnrollResponse(
        id=identity.id,
        name=identity.name,
        num_faces=identity.num_faces,
        face_ids=list(identity.face_ids),
        rejected=[Rejected(index=r.index, reason=r.reason) for r in enrolled.refused],
        possible_duplicates=[match_out(m) for m in enrolled.duplicates] if new_person else None,
    )


def parse_embeddings(text: str) -> object:
    """The `embeddings` form field (JSON text) as the JSON value; the use case checks the vectors."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise HTTPException(status_code=422, detail=f"embeddings is not valid JSON: {error.msg}") from error


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
# route_class: the routes taking images read them from a multipart form or a JSON body (api/bodies.py)
router = APIRouter(tags=["gallery"], dependencies=[KeyRequired], responses=KEY_ERRORS, route_class=JsonOrFormRoute)


ENROLL_ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 413, 422, 503),
    409: {"model": Error, "description": "on_duplicate=reject and the faces match someone enrolled (the detail "
          "names them), or model_sha256 is not the served recognizer's; nothing was stored"},
    413: {"model": Error, "description": "more than MAX_ENROLL_IMAGES images or embeddings, or an upload above the "
          "byte limit"},
    422: {"model": Unprocessable, "description": "no usable face; neither or both of images and embeddings; a "
          "vector that is not 512 finite numbers, or is zero; a field missing or invalid"},
}
ENROLL_JSON_EXAMPLES = {
    "photos": {"summary": "from photos (base64, cut short here)",
               "value": {"name": "Ada Lovelace", "images": ["/9j/4AAQSkZJRgABAQAAAQABAAD/2wBD"],
                         "metadata": {"team": "math"}}},
    "embeddings": {"summary": "from embeddings made by this service's recognizer (POST /embedding)",
                   "value": {"name": "Ada Lovelace", "embeddings": [EXAMPLE_VECTOR],
                             "model_sha256": EXAMPLE_SHA256}},
}


@router.post("/identities", status_code=201, response_model=EnrollResponse, response_model_exclude_none=True,
             responses=ENROLL_ERRORS, summary="Enroll a person from one or more photos, or from their embeddings",
             openapi_extra={"requestBody": {"content": {"application/json": {"examples": ENROLL_JSON_EXAMPLES}}}})
async def enroll(
    enrollment: EnrollmentDep,
    name: Annotated[str, Form(min_length=1, max_length=200)],
    images: Annotated[
        list[UploadFile] | None, File(description="one or more photos, each with exactly one face (or embeddings)")
    ] = None,
    embeddings: Annotated[str | None, Form(
        description=f"instead of images: the person's embeddings, each {EMBEDDING_DIM} finite numbers made by the "
        "served recognizer (POST /embedding), each stored as one sample, at most MAX_ENROLL_IMAGES; JSON text",
        json_schema_extra=EMBEDDINGS_JSON_TEXT,
    )] = None,
    model_sha256: ModelSha256 = None,
    metadata: Annotated[str | None, Form(description="JSON object", json_schema_extra=JSON_TEXT)] = None,
    on_duplicate: Annotated[Literal["allow", "reject"], Query(
        description="when the new faces match someone enrolled (at IDENTIFY_THRESHOLD): `allow` enrolls and lists "
        "them in possible_duplicates, `reject` answers 409 and stores nothing"
    )] = "allow",
) -> EnrollResponse:
    extra = parse_metadata(metadata)
    if (images is None) == (embeddings is None):
        raise HTTPException(status_code=422, detail="send the person's photos (images) or their embeddings "
                            "(embeddings), one of the two" + (", not both" if images is not None else ""))
    reject = on_duplicate == "reject"
    if embeddings is not None:
        enrolled = await enrollment.enroll_embeddings(name, extra, parse_embeddings(embeddings), model_sha256, reject)
    else:
        enrolled = await enrollment.enroll(name, extra, images, reject, model_sha256)
    return enroll_response(enrolled, new_person=True)


@router.get("/identities", response_model=IdentityList,
            responses=error_responses(422), summary="List enrolled people")
async def list_identities(
    people: PeopleDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> IdentityList:
    total, found = await people.list(limit, offset)
    return IdentityList(total=total, identities=[identity_out(p) for p in found])


@router.get("/identities/{identity_id}", response_model=IdentityOut,
            responses=error_responses(404, 422))
async def get_identity(people: PeopleDep, identity_id: str) -> IdentityOut:
    return identity_out(await people.get(identity_id))


@router.patch("/identities/{identity_id}", response_model=IdentityOut,
              responses=error_responses(400, 404, 422), summary="Rename a person or replace their metadata")
async def patch_identity(people: PeopleDep, identity_id: str, patch: IdentityPatch) -> IdentityOut:
    return identity_out(await people.update(identity_id, patch.name, patch.metadata))


@router.post("/identities/{identity_id}/faces", response_model=EnrollResponse, response_model_exclude_none=True,
             responses=error_responses(400, 404, 413, 422, 503), summary="Add photos to a person")
async def add_faces(enrollment: EnrollmentDep, identity_id: str, images: Images) -> EnrollResponse:
    return enroll_response(await enrollment.add_faces(identity_id, images))


@router.get("/identities/{identity_id}/faces", response_model=FaceList, responses=error_responses(404, 422),
            summary="A person's face samples, each with its quality and head pose at enrollment")
async def list_faces(people: PeopleDep, identity_id: str) -> FaceList:
    return FaceList(faces=[face_out(face) for face in await people.faces(identity_id)])


@router.delete("/identities/{identity_id}/faces/{face_id}", response_model=IdentityOut,
               responses=error_responses(404, 409, 422),
               summary="Remove one face sample (not the last one: delete the person instead)")
async def delete_face(people: PeopleDep, identity_id: str, face_id: FaceId) -> IdentityOut:
    return identity_out(await people.delete_face(identity_id, face_id))


@router.post("/identities/{identity_id}/merge", response_model=IdentityOut,
             responses=error_responses(400, 404, 422),
             summary="Move another entry's faces into this person and delete that entry")
async def merge(people: PeopleDep, identity_id: str, source_id: Annotated[str, Form()]) -> IdentityOut:
    return identity_out(await people.merge(identity_id, source_id))


@router.delete("/identities/{identity_id}", response_model=Deleted,
               responses=error_responses(404, 422))
async def delete_identity(people: PeopleDep, identity_id: str) -> Deleted:
    await people.delete(identity_id)
    return Deleted(deleted=1)


@router.delete("/identities", response_model=Deleted,
               responses=error_responses(400, 422), summary="Delete everyone (needs confirm=true)")
async def delete_all(people: PeopleDep, confirm: bool = False) -> Deleted:
    if not confirm:
        raise HTTPException(status_code=400, detail="deleting every identity needs ?confirm=true; nothing was deleted")
    return Deleted(deleted=await people.delete_all())


@router.post("/identify", response_model=IdentifyResponse,
             responses={**OPENAPI_JPEG_RESPONSE, **error_responses(400, 413, 422, 503)},
             response_model_exclude_unset=True,  # liveness only when asked for; identity stays null when unknown
             summary="Name every face in a photo, or call it unknown")
async def identify(
    identification: IdentificationDep,
    settings: SettingsDep,
    image: Annotated[UploadFile, File(description="photo with one or more faces")],
    top_k: Annotated[int, Form(ge=1, le=100)] = 5,
    threshold: Annotated[float | None, Form(ge=-1, le=1)] = None,
    annotate: Annotated[bool, Query(description="answer with the photo as a JPEG, names drawn")] = False,
    liveness: Annotated[
        bool, Query(description="also check every face with the anti-spoofing model (503 when it is not installed)")
    ] = False,
    include_annotated: Annotated[bool, Query(description=INCLUDE_ANNOTATED_DESCRIPTION)] = False,
):
    pixels = await read_image(image, settings)
    result = await identification.identify(pixels, top_k, threshold, liveness)
    faces = []
    for face in result.identified:
        shaped = IdentifiedFace(
            bbox=[round(float(v), 2) for v in face.box],
            score=round(face.score, 4),
            identity=match_out(face.identity) if face.identity else None,
            matches=[match_out(m) for m in face.matches],
            **attributes_json(face.attributes),
        )
        if liveness:
            shaped.liveness = liveness_json(face.liveness)
        faces.append(shaped)
    jpeg = None
    if annotate or include_annotated:
        labels = [f"{f.identity.name} {f.identity.similarity:.2f}" if f.identity else "unknown" for f in faces]
        colours = [KNOWN_COLOUR if f.identity else UNKNOWN_COLOUR for f in faces]
        jpeg = await asyncio.to_thread(annotated_jpeg, pixels, result.faces, labels, colours)
        if annotate:
            return Response(jpeg, media_type=JPEG_MEDIA_TYPE)
    answer = IdentifyResponse(width=pixels.shape[1], height=pixels.shape[0], threshold=result.threshold, faces=faces)
    if jpeg is not None:
        answer.annotated = data_url(jpeg, JPEG_MEDIA_TYPE)  # set, so exclude_unset keeps it
    return answer

"""HTTP route: 1:1 verification, is the main face of a photo this enrolled person? (`POST /identities/{id}/verify`)

The face is scored against that person as /identify scores people (`usecases.verification`),
against IDENTIFY_THRESHOLD unless the request gives a threshold. The photo comes as a multipart
`image` or in a JSON body (`{"image": "<base64>"}`, api/bodies.py). Needs the key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile
from pydantic import BaseModel, Field

from api.bodies import JsonOrFormRoute
from api.dependencies import KeyRequired, SettingsDep, VerificationDep, read_image
from api.gallery import KEY_ERRORS, error_responses
from api.schemas import DetectedFace, faces_json, liveness_json

router = APIRouter(tags=["gallery"], dependencies=[KeyRequired], responses=KEY_ERRORS, route_class=JsonOrFormRoute)


class VerifiedIdentity(BaseModel):
    id: str = Field(examples=["5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b"])
    name: str = Field(examples=["Ada Lovelace"])


class VerifyResponse(BaseModel):
    similarity: float = Field(description="the face's score for this person, as /identify scores them (centroid or "
                              "best-sample cosine, GALLERY_SCORING)", examples=[0.71])
    same_person: bool = Field(description="similarity >= threshold", examples=[True])
    threshold: float = Field(description="IDENTIFY_THRESHOLD unless the request gave one", examples=[0.4])
    face: DetectedFace = Field(description="the photo's main face, chosen as /embedding chooses; `liveness` only "
                               "with liveness=true")
    identity: VerifiedIdentity


@router.post("/identities/{identity_id}/verify", response_model=VerifyResponse, response_model_exclude_none=True,
             responses=error_responses(400, 404, 413, 422, 503),
             summary="Is the main face of a photo this enrolled person? (1:1 verification)")
async def verify(
    verification: VerificationDep,
    settings: SettingsDep,
    identity_id: str,
    image: Annotated[UploadFile, File(description="photo of the person to verify (its main face is used)")],
    threshold: Annotated[float | None, Form(ge=-1, le=1, description="IDENTIFY_THRESHOLD unless given")] = None,
    liveness: Annotated[
        bool, Query(description="also check the face with the anti-spoofing model (503 when it is not installed)")
    ] = False,
) -> VerifyResponse:
    pixels = await read_image(image, settings)
    result = await verification.verify(identity_id, pixels, threshold, liveness)
    face = faces_json(result.face, [result.attributes], DetectedFace)[0]
    face.liveness = liveness_json(result.liveness)
    return VerifyResponse(
        similarity=round(result.identity.similarity, 6),
        same_person=result.same_person,
        threshold=result.threshold,
        face=face,
        identity=VerifiedIdentity(id=result.identity.id, name=result.identity.name),
    )

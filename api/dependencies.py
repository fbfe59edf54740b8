"""What routes receive: the use cases and settings from the app's state, uploads decoded, key checks."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile

from imaging.decode import read_upload
from settings import Settings
from usecases.enrollment import Enrollment
from usecases.faces import FaceUseCases
from usecases.identification import Identification
from usecases.liveness import LivenessCheck
from usecases.people import People
from usecases.status import ServiceStatus

API_KEY_HEADER = "X-API-Key"


def from_state(name: str) -> Any:
    """A dependency giving `app.state.<name>`, set by the app's lifespan (the use cases) or factory (settings)."""

    def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(get)


SettingsDep = Annotated[Settings, from_state("settings")]
FacesDep = Annotated[FaceUseCases, from_state("faces")]
EnrollmentDep = Annotated[Enrollment, from_state("enrollment")]
IdentificationDep = Annotated[Identification, from_state("identification")]
PeopleDep = Annotated[People, from_state("people")]
LivenessDep = Annotated[LivenessCheck, from_state("liveness")]
StatusDep = Annotated[ServiceStatus, from_state("status")]


async def read_image(upload: UploadFile, settings: Settings) -> np.ndarray:
    """One uploaded image -> (H, W, 3) RGB with the configured byte and pixel limits."""
    return await read_upload(upload, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)


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

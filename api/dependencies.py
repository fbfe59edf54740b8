"""What routes receive: the use cases and settings from the app's state, uploads decoded, key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile

from imaging.decode import read_upload
from settings import Settings
from usecases.enrollment import Enrollment
from usecases.faces import FaceUseCases
from usecases.identification import Identification
from usecases.people import People
from usecases.status import ServiceStatus

API_KEY_HEADER = "X-API-Key"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_faces(request: Request) -> FaceUseCases:
    return request.app.state.faces


def get_enrollment(request: Request) -> Enrollment:
    return request.app.state.enrollment


def get_identification(request: Request) -> Identification:
    return request.app.state.identification


def get_people(request: Request) -> People:
    return request.app.state.people


def get_status(request: Request) -> ServiceStatus:
    return request.app.state.status


SettingsDep = Annotated[Settings, Depends(get_settings)]
FacesDep = Annotated[FaceUseCases, Depends(get_faces)]
EnrollmentDep = Annotated[Enrollment, Depends(get_enrollment)]
IdentificationDep = Annotated[Identification, Depends(get_identification)]
PeopleDep = Annotated[People, Depends(get_people)]
StatusDep = Annotated[ServiceStatus, Depends(get_status)]


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

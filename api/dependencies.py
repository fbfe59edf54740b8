"""What routes receive: the use cases and settings from the app's state, uploads decoded, the API key check."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import Depends, HTTPException, Request, Security, UploadFile
from fastapi.security import APIKeyHeader

from api.keys import KeyGuard, Outcome
from imaging.decode import read_upload
from settings import Settings
from usecases.enrollment import Enrollment
from usecases.faces import FaceUseCases
from usecases.identification import Identification
from usecases.liveness import LivenessCheck
from usecases.people import People
from usecases.status import ServiceStatus
from usecases.verification import Verification
from usecases.video_jobs import VideoJobs

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
VerificationDep = Annotated[Verification, from_state("verification")]
LivenessDep = Annotated[LivenessCheck, from_state("liveness")]
StatusDep = Annotated[ServiceStatus, from_state("status")]
VideosDep = Annotated[VideoJobs, from_state("videos")]


async def read_image(upload: UploadFile, settings: Settings) -> np.ndarray:
    """One uploaded image -> (H, W, 3) RGB with the configured byte and pixel limits."""
    return await read_upload(upload, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)


# Declared as a security scheme: Swagger UI's Authorize button then sends it on the protected routes.
API_KEY_SCHEME = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="APIKey",
    description="The gallery's key: the value of API_KEY, or the file API_KEY_FILE (default data/api_key "
    "beside GALLERY_DB) the server generated on its first start.",
    auto_error=False,  # the check below gives the 401 (with where the key is) and the 429
)


MAX_ADDRESS_CHARS = 64  # an IPv6 address with a zone fits; a forged header cannot grow the window's memory


def client_address(request: Request, settings: Settings) -> str:
    """The address wrong keys are counted against: the connection's peer, or with TRUST_FORWARDED_FOR
    the last X-Forwarded-For entry (the one the reverse proxy in front appended)."""
    if settings.trust_forwarded_for:
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        if last := forwarded.rsplit(",", 1)[-1].strip():
            return last[:MAX_ADDRESS_CHARS]
    return request.client.host if request.client else "unknown"


async def require_key(request: Request, given: Annotated[str | None, Security(API_KEY_SCHEME)] = None) -> None:
    """401 without the right X-API-Key (saying where the key is), 429 after too many wrong ones.

    `async` on purpose: it runs on the event loop, never in a worker thread, so the failure
    window is only ever touched by one request at a time (and the check does no I/O)."""
    guard: KeyGuard = request.app.state.api_keys
    verdict = guard.check(given, client_address(request, request.app.state.settings))
    if verdict.outcome is Outcome.ACCEPTED:
        return
    if verdict.outcome is Outcome.LIMITED:
        raise HTTPException(
            status_code=429,
            detail=f"too many wrong {API_KEY_HEADER} values from this address: try again in "
            f"{verdict.retry_after_s} s (the right key is accepted at any time)",
            headers={"Retry-After": str(verdict.retry_after_s)},
        )
    problem = f"missing {API_KEY_HEADER} header" if verdict.outcome is Outcome.MISSING else f"wrong {API_KEY_HEADER}"
    raise HTTPException(status_code=401, detail=f"{problem}: {guard.where_to_find_it()}")


KeyRequired = Depends(require_key)

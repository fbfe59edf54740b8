"""Every domain error's HTTP status, in one table.

The app's exception handlers answer a request that raised one with this status (`app.py`), and
a batch answers an image that failed on its own with it (`POST /embeddings`: `{"error": {"status",
"detail"}}` in that image's place), so both say the same thing for the same mistake.
"""

from __future__ import annotations

from errors import (
    AnnotatedVideoMissing,
    DuplicateIdentity,
    GalleryModelMismatch,
    ImageTooLarge,
    InferenceUnavailable,
    InvalidEmbedding,
    InvalidImage,
    InvalidVideo,
    LivenessUnavailable,
    ModelMismatch,
    ModelRepositoryError,
    NoFaceDetected,
    NoUsableFace,
    SameIdentity,
    VideoJobNotFound,
    VideoJobsBusy,
    VideoTooLarge,
)
from gallery.store import FaceNotFound, IdentityNotFound, LastFace

ERROR_STATUS: dict[type[Exception], int] = {
    IdentityNotFound: 404,
    FaceNotFound: 404,
    LastFace: 409,
    NoUsableFace: 422,
    SameIdentity: 422,
    InvalidEmbedding: 422,
    ModelMismatch: 409,  # the client's vectors are another recognizer's: embed again with this service
    DuplicateIdentity: 409,
    InvalidImage: 400,
    ImageTooLarge: 413,
    NoFaceDetected: 422,
    InferenceUnavailable: 503,
    LivenessUnavailable: 503,
    ModelRepositoryError: 503,
    # found after start-up (Triton was not reachable then); at start-up it stops the start
    GalleryModelMismatch: 503,
    InvalidVideo: 400,
    VideoTooLarge: 413,
    VideoJobNotFound: 404,
    AnnotatedVideoMissing: 404,
    VideoJobsBusy: 503,
}


def status_for(error: Exception) -> int:
    """The HTTP status of a domain error (of one of ERROR_STATUS's classes, or a subclass)."""
    return next(code for cls, code in ERROR_STATUS.items() if isinstance(error, cls))

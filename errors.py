"""Domain exceptions shared by every layer.

They carry no HTTP knowledge: `app.py` maps each class to a status code once,
in its exception handlers. The message is written for the API's user and is
returned verbatim as `{"detail": message}`.
"""

from __future__ import annotations


class FaceServiceError(Exception):
    """Base class; `message` is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(FaceServiceError):
    """The upload is not an image we can decode (corrupt, truncated, unsupported format)."""


class ImageTooLarge(FaceServiceError):
    """The upload exceeds the configured byte or pixel limits."""


class NoFaceDetected(FaceServiceError):
    """The image decoded fine but the detector found no face in it."""


class InferenceUnavailable(FaceServiceError):
    """Triton cannot be reached, is not ready, failed or timed out."""


class ModelRepositoryError(FaceServiceError):
    """A model file or repository is missing, corrupt or has an unexpected signature."""


class NoUsableFace(FaceServiceError):
    """No photo of an enrollment had a usable face; the message lists every photo's reason."""

    def __init__(self, reasons: str) -> None:
        super().__init__(f"no usable face in any image ({reasons}); nothing was stored")


class SameIdentity(FaceServiceError):
    """Merging an identity into itself."""


class LivenessUnavailable(FaceServiceError):
    """The anti-spoofing model is not installed on this Triton (503; everything else keeps working)."""


class GalleryModelMismatch(FaceServiceError):
    """The gallery's embeddings were made by another recognizer than the one served: comparing them
    would be meaningless. Stops the start (the message says which models and what to do); found
    later (Triton was not reachable at start), every request that needs embeddings gets 503."""


class InvalidEmbedding(FaceServiceError):
    """A client's embedding is not 512 finite numbers, or is zero (422): nothing can be searched or stored."""


class ModelMismatch(FaceServiceError):
    """A client's embeddings name (model_sha256) another recognizer than the one served (409): vectors of
    two models cannot be compared."""


class DuplicateIdentity(FaceServiceError):
    """Enrollment with on_duplicate=reject of faces that match someone enrolled already (409; nothing stored)."""


class InvalidVideo(FaceServiceError):
    """The upload is not a video we can decode (not a video, truncated before its first frame, no frame rate)."""


class VideoTooLarge(FaceServiceError):
    """The video exceeds MAX_VIDEO_BYTES, MAX_VIDEO_SECONDS or the per-frame pixel limit."""


class VideoJobNotFound(FaceServiceError):
    """No video job with this id: never made, removed, expired, or made before the service restarted."""


class VideoJobsBusy(FaceServiceError):
    """Every video worker is busy and the job queue is full; `retry_after_s` says when to try again."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AnnotatedVideoMissing(FaceServiceError):
    """The job has no annotated video (not asked for with annotate=true, or not finished yet)."""

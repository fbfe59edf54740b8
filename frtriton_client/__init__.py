"""Typed Python client for the FR Triton HTTP API.

A self-contained package (`client.py`: the client; `results.py`: its answers; `errors.py`: its
exceptions): it depends only on `httpx` and imports nothing else of the project, so the folder
can be copied into another code base as is.

    from frtriton_client import FRTritonClient, NoFaceDetected

    with FRTritonClient("http://localhost:3000", api_key_file="data/api_key") as client:
        result = client.compare("id_photo.jpg", "selfie.jpg")
        print(result.similarity, result.same_person)
        ada = client.enroll("Ada Lovelace", ["ada1.jpg", "ada2.jpg"], metadata={"team": "math"})
        for face in client.identify("meeting.jpg"):
            print(face.bbox, face.identity.name if face.identity else "unknown")
        for face in client.detect("group.jpg"):
            print(face.pose.yaw, face.quality.enrollable, face.quality.reasons)

The gallery methods (enroll, enroll_embeddings, identify, identify_embeddings, verify, list,
update, merge, delete, faces, delete_face) need the service's API key:
`api_key="..."`, `api_key_file=` a file holding it (the service writes `data/api_key` on its
first start), or the `FRTRITON_API_KEY` environment variable, in that order. The face methods
(detect, embed, compare) and the probes need none.

Images are given as a path (`str` or `pathlib.Path`), raw bytes, or a binary file object
opened for reading. They are uploaded as multipart form fields; `send_json=True` sends JSON
bodies with the images in base64 instead (a third larger: for proxies or gateways that only
pass JSON; the answers are the same). Answers are frozen dataclasses whose field names are the JSON keys of the
API. Every error the service reports becomes an `FRTritonError` subclass carrying the HTTP
status and the service's `detail` message; a service that cannot be reached or does not
answer in time raises `ServiceUnavailable` too (status `None`).
"""

from __future__ import annotations

from frtriton_client.client import API_KEY_HEADER, FRTritonClient, ImageInput
from frtriton_client.errors import (
    Conflict,
    ConnectionFailed,
    FRTritonError,
    InvalidRequest,
    NoFaceDetected,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
)
from frtriton_client.results import (
    Comparison,
    Embedding,
    Enrollment,
    EnrollmentQuality,
    Face,
    FaceQuality,
    FaceSample,
    HeadPose,
    Identification,
    Identity,
    IdentityPage,
    ImageError,
    Match,
    NamedEmbedding,
    Pose,
    RecognizerModel,
    Rejected,
    Verification,
)
from frtriton_client.video_results import PersonSeen, VideoJob, VideoJobFailed, VideoResult, VideoTrack

__all__ = [
    "API_KEY_HEADER",
    "Comparison",
    "Conflict",
    "ConnectionFailed",
    "Embedding",
    "Enrollment",
    "EnrollmentQuality",
    "FRTritonClient",
    "FRTritonError",
    "Face",
    "HeadPose",
    "FaceQuality",
    "FaceSample",
    "Identification",
    "Identity",
    "IdentityPage",
    "ImageError",
    "ImageInput",
    "InvalidRequest",
    "Match",
    "NamedEmbedding",
    "PersonSeen",
    "NoFaceDetected",
    "NotFound",
    "Pose",
    "RecognizerModel",
    "RateLimited",
    "Rejected",
    "ServiceUnavailable",
    "Timeout",
    "Unauthorized",
    "Verification",
    "VideoJob",
    "VideoJobFailed",
    "VideoResult",
    "VideoTrack",
]

"""Typed Python client for the FR Triton HTTP API.

A single self-contained file: it depends only on `httpx` and imports nothing else of the
project, so it can be copied into another code base as is.

    from frtriton_client import FRTritonClient, NoFaceDetected

    with FRTritonClient("http://localhost:3000", api_key_file="data/api_key") as client:
        result = client.compare("id_photo.jpg", "selfie.jpg")
        print(result.similarity, result.same_person)
        ada = client.enroll("Ada Lovelace", ["ada1.jpg", "ada2.jpg"], metadata={"team": "math"})
        for face in client.identify("meeting.jpg"):
            print(face.bbox, face.identity.name if face.identity else "unknown")

The gallery methods (enroll, identify, list, update, merge, delete) need the service's API key:
`api_key="..."`, `api_key_file=` a file holding it (the service writes `data/api_key` on its
first start), or the `FRTRITON_API_KEY` environment variable, in that order. The face methods
(detect, embed, compare) and the probes need none.

Images are given as a path (`str` or `pathlib.Path`), raw bytes, or a binary file object
opened for reading. Answers are frozen dataclasses whose field names are the JSON keys of the
API. Every error the service reports becomes an `FRTritonError` subclass carrying the HTTP
status and the service's `detail` message; a service that cannot be reached or does not
answer in time raises `ServiceUnavailable` too (status `None`).
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

import httpx

__all__ = [
    "API_KEY_HEADER",
    "Comparison",
    "ConnectionFailed",
    "Embedding",
    "Enrollment",
    "FRTritonClient",
    "FRTritonError",
    "Face",
    "Identification",
    "Identity",
    "IdentityPage",
    "ImageInput",
    "InvalidRequest",
    "Match",
    "NoFaceDetected",
    "NotFound",
    "RateLimited",
    "Rejected",
    "ServiceUnavailable",
    "Timeout",
    "Unauthorized",
]

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "FRTRITON_API_KEY"
DEFAULT_TIMEOUT_S = 30.0
# Default page size of GET /identities; the service allows 1..1000.
DEFAULT_PAGE_SIZE = 100
DEFAULT_TOP_K = 5
# Prefixes of the 422 details the service gives when a photo has no (usable) face:
# "no face was detected in image_b" (detect/compare) and
# "no usable face in any image (image 0: no face detected); nothing was stored" (enrollment).
NO_FACE_DETAIL_PREFIXES = ("no face was detected", "no usable face")
GENERIC_CONTENT_TYPE = "application/octet-stream"

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""A path, the encoded image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF), or a binary file object."""


# --------------------------------------------------------------------------- errors
class FRTritonError(Exception):
    """Base of every error this client raises for the service.

    `status` is the HTTP status code, or None when no HTTP answer arrived (connection
    refused, timeout). `detail` is the service's human-readable message.
    """

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(f"{status}: {detail}" if status is not None else detail)
        self.status = status
        self.detail = detail


class InvalidRequest(FRTritonError):
    """The request was refused as the caller's mistake: not an image (400), too large (413),
    a missing or invalid field (422), or another 4xx not covered by a narrower class."""


class NoFaceDetected(InvalidRequest):
    """422: a photo has no face (or, for an enrollment, no image had one usable face)."""


class Unauthorized(FRTritonError):
    """401/403: the `X-API-Key` header is missing or wrong. `detail` is the service's message
    (it says where the key is); the exception's text adds how to give this client the key."""

    def __init__(self, status: int | None, detail: str, hint: str = "") -> None:
        super().__init__(status, detail)
        if hint:
            self.args = (f"{self.args[0]} ({hint})",)


class RateLimited(Unauthorized):
    """429: too many wrong API keys from this address; `retry_after` is the service's delay in seconds.

    The service accepts the right key at any time, so the fix is the key, not waiting.
    """

    def __init__(self, status: int | None, detail: str, retry_after: float | None = None, hint: str = "") -> None:
        super().__init__(status, detail, hint)
        self.retry_after = retry_after


class NotFound(FRTritonError):
    """404: unknown identity id."""


class ServiceUnavailable(FRTritonError):
    """503: Triton is unreachable, not ready or too slow; or the API itself could not be reached.

    `retry_after` is the delay in seconds the service asked for (its `Retry-After` header),
    or None when it gave none.
    """

    def __init__(self, status: int | None, detail: str, retry_after: float | None = None) -> None:
        super().__init__(status, detail)
        self.retry_after = retry_after


class ConnectionFailed(ServiceUnavailable):
    """The API could not be reached at all (refused, DNS, reset); `status` is None."""


class Timeout(ServiceUnavailable):
    """The API did not answer within the client's timeout; `status` is None."""


# --------------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the image as displayed (EXIF orientation applied)."""

    bbox: tuple[float, float, float, float]
    """x1, y1, x2, y2."""
    score: float
    """Detector confidence in [0, 1]."""
    landmarks: tuple[tuple[float, float], ...]
    """Left eye, right eye, nose tip, left and right mouth corners as (x, y)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Face:
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        return cls(
            bbox=(x1, y1, x2, y2),
            score=float(data["score"]),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
        )


@dataclass(frozen=True)
class Embedding:
    """The L2-normalised embedding of a photo's main face (the largest face nearest the centre)."""

    embedding: tuple[float, ...]
    face: Face

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Embedding:
        return cls(embedding=tuple(float(v) for v in data["embedding"]), face=Face.from_json(data["face"]))


@dataclass(frozen=True)
class Comparison:
    """The main faces of two photos compared: `same_person` is `similarity >= threshold`."""

    similarity: float
    """Raw cosine similarity in [-1, 1]."""
    same_person: bool
    threshold: float
    face_a: Face
    face_b: Face

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Comparison:
        return cls(
            similarity=float(data["similarity"]),
            same_person=bool(data["same_person"]),
            threshold=float(data["threshold"]),
            face_a=Face.from_json(data["face_a"]),
            face_b=Face.from_json(data["face_b"]),
        )


@dataclass(frozen=True)
class Match:
    """A gallery person and their best cosine similarity to a face."""

    id: str
    name: str
    similarity: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Match:
        return cls(id=str(data["id"]), name=str(data["name"]), similarity=float(data["similarity"]))


@dataclass(frozen=True)
class Identification:
    """One face of an identified photo: who it is (None = unknown) and the nearest people."""

    bbox: tuple[float, float, float, float]
    score: float
    identity: Match | None
    """The best match when it reaches the threshold, else None (unknown)."""
    matches: tuple[Match, ...]
    """Up to `top_k` nearest people, best first, whatever the threshold."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identification:
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        identity = data.get("identity")
        return cls(
            bbox=(x1, y1, x2, y2),
            score=float(data["score"]),
            identity=Match.from_json(identity) if identity is not None else None,
            matches=tuple(Match.from_json(m) for m in data["matches"]),
        )


@dataclass(frozen=True)
class Rejected:
    """An image of an enrollment that was not used, and why."""

    index: int
    """Position of the image in the request."""
    reason: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rejected:
        return cls(index=int(data["index"]), reason=str(data["reason"]))


@dataclass(frozen=True)
class Enrollment:
    """The result of enrolling a person or adding photos to one."""

    id: str
    name: str
    num_faces: int
    """Face samples stored for the person in total."""
    rejected: tuple[Rejected, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Enrollment:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            num_faces=int(data["num_faces"]),
            rejected=tuple(Rejected.from_json(r) for r in data["rejected"]),
        )


@dataclass(frozen=True)
class Identity:
    """A person of the gallery."""

    id: str
    name: str
    num_faces: int
    metadata: dict[str, Any] = field(hash=False)
    created_at: str
    """ISO 8601 timestamp with offset."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identity:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            num_faces=int(data["num_faces"]),
            metadata=dict(data.get("metadata") or {}),
            created_at=str(data["created_at"]),
        )


@dataclass(frozen=True)
class IdentityPage:
    """One page of the gallery: `total` people in all, `identities` from the requested offset."""

    total: int
    identities: tuple[Identity, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IdentityPage:
        return cls(total=int(data["total"]), identities=tuple(Identity.from_json(i) for i in data["identities"]))


# --------------------------------------------------------------------------- helpers
FileField = tuple[str, tuple[str, bytes, str]]


def _is_single_image(images: ImageInput | Iterable[ImageInput]) -> bool:
    # str and bytes are iterable too: they are one image (a path, the encoded file), not many.
    return isinstance(images, str | bytes | bytearray | memoryview | os.PathLike) or hasattr(images, "read")


def _image_part(image: ImageInput, default_name: str) -> tuple[str, bytes, str]:
    """(filename, content, content type) of one image for a multipart upload."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        name, data = path.name, path.read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        name, data = default_name, bytes(image)
    elif hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("the file object must be opened in binary mode ('rb')")
        # The service only uses the name in its messages; a file object may have none (BytesIO).
        raw_name = getattr(image, "name", None)
        name = Path(raw_name).name if isinstance(raw_name, str) and raw_name else default_name
    else:
        raise TypeError(f"an image must be a path, bytes or a binary file object, not {type(image).__name__}")
    content_type = mimetypes.guess_type(name)[0] or GENERIC_CONTENT_TYPE
    return name, data, content_type


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detail_text(response: httpx.Response) -> str:
    """The service's `detail` as one readable string (FastAPI validation errors are a list)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip() or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                # loc is e.g. ["body", "image_a"]: the field name is what the caller can fix.
                location = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
                parts.append(f"{'.'.join(location)}: {item['msg']}" if location else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return json.dumps(detail)


def _key_hint(sent_key: bool) -> str:
    if sent_key:
        return "this client sent a key the service does not accept: check api_key, api_key_file or " + API_KEY_ENV
    return f"this client sent no key: pass api_key= or api_key_file=, or set {API_KEY_ENV}"


def _error_for(response: httpx.Response, sent_key: bool = False) -> FRTritonError:
    status = response.status_code
    detail = _detail_text(response)
    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
    if status == 503:
        return ServiceUnavailable(status, detail, retry_after)
    if status == 429:
        return RateLimited(status, detail, retry_after, _key_hint(sent_key))
    if status in (401, 403):
        return Unauthorized(status, detail, _key_hint(sent_key))
    if status == 404:
        return NotFound(status, detail)
    if status == 422 and detail.lower().startswith(NO_FACE_DETAIL_PREFIXES):
        return NoFaceDetected(status, detail)
    if 400 <= status < 500:
        return InvalidRequest(status, detail)
    return FRTritonError(status, detail)


def _resolve_key(api_key: str | None, api_key_file: str | os.PathLike[str] | None) -> str | None:
    """The key to send: the argument, the file's contents, or FRTRITON_API_KEY (stripped; blank = none)."""
    if api_key is not None and api_key_file is not None:
        raise ValueError("give api_key or api_key_file, not both")
    if api_key is not None:
        return api_key.strip() or None
    if api_key_file is not None:
        try:
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ValueError(f"cannot read the API key file {api_key_file}: {error}") from error
        if not key:
            raise ValueError(f"the API key file {api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV, "").strip() or None


# --------------------------------------------------------------------------- client
class FRTritonClient:
    """Synchronous client of one FR Triton service; use it as a context manager or call `close()`.

    The API key is sent as the `X-API-Key` header on every request (the service needs it for
    every gallery route): `api_key`, else the contents of `api_key_file` (e.g. a copy of the
    service's `data/api_key`), else the `FRTRITON_API_KEY` environment variable, else none.
    `timeout` is in seconds per request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        api_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        key = _resolve_key(api_key, api_key_file)
        headers = {API_KEY_HEADER: key} if key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- service
    def health(self) -> bool:
        """True when the API process answers; False when it cannot be reached or is failing."""
        try:
            return self._http.get("/health").status_code == httpx.codes.OK
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """True when Triton and both models are ready to serve; False otherwise (or unreachable)."""
        try:
            return self._http.get("/ready").status_code == httpx.codes.OK
        except httpx.TransportError:
            return False

    # ----------------------------------------------------------------- faces
    def detect(self, image: ImageInput) -> list[Face]:
        """Every face of the photo, best score first."""
        body = self._request("POST", "/detect", files=[("image", _image_part(image, "image"))])
        return [Face.from_json(f) for f in body["faces"]]

    def embed(self, image: ImageInput) -> Embedding:
        """The 512-float unit embedding of the photo's main face; NoFaceDetected if it has none."""
        body = self._request("POST", "/embedding", files=[("image", _image_part(image, "image"))])
        return Embedding.from_json(body)

    def compare(self, image_a: ImageInput, image_b: ImageInput) -> Comparison:
        """Whether the main faces of two photos are the same person."""
        files = [("image_a", _image_part(image_a, "image_a")), ("image_b", _image_part(image_b, "image_b"))]
        return Comparison.from_json(self._request("POST", "/face-similarity", files=files))

    # ----------------------------------------------------------------- gallery
    def identify(
        self, image: ImageInput, top_k: int = DEFAULT_TOP_K, threshold: float | None = None
    ) -> list[Identification]:
        """Name every face of the photo from the gallery, or call it unknown (`identity` None).

        `threshold` overrides the service's `IDENTIFY_THRESHOLD` for this request.
        """
        data = {"top_k": str(top_k)}
        if threshold is not None:
            data["threshold"] = str(threshold)
        body = self._request("POST", "/identify", data=data, files=[("image", _image_part(image, "image"))])
        return [Identification.from_json(f) for f in body["faces"]]

    def enroll(
        self,
        name: str,
        images: ImageInput | Iterable[ImageInput],
        metadata: Mapping[str, Any] | None = None,
    ) -> Enrollment:
        """Add a person from one or more photos, each showing them as the clear subject.

        Unusable photos are listed in `rejected`; if none is usable NoFaceDetected is raised
        and nothing is stored.
        """
        data = {"name": name}
        if metadata is not None:
            data["metadata"] = json.dumps(dict(metadata))
        return Enrollment.from_json(self._request("POST", "/identities", data=data, files=self._images(images)))

    def add_faces(self, identity_id: str, images: ImageInput | Iterable[ImageInput]) -> Enrollment:
        """Add photos to an enrolled person; NotFound for an unknown id."""
        body = self._request("POST", f"/identities/{identity_id}/faces", files=self._images(images))
        return Enrollment.from_json(body)

    def list_identities(self, limit: int = DEFAULT_PAGE_SIZE, offset: int = 0) -> IdentityPage:
        """One page of the gallery, `limit` people from `offset` (oldest first)."""
        body = self._request("GET", "/identities", params={"limit": limit, "offset": offset})
        return IdentityPage.from_json(body)

    def get_identity(self, identity_id: str) -> Identity:
        """One person; NotFound for an unknown id."""
        return Identity.from_json(self._request("GET", f"/identities/{identity_id}"))

    def update_identity(
        self, identity_id: str, name: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Identity:
        """Rename a person and/or replace their metadata; fields left None are unchanged."""
        patch: dict[str, Any] = {}
        if name is not None:
            patch["name"] = name
        if metadata is not None:
            patch["metadata"] = dict(metadata)
        return Identity.from_json(self._request("PATCH", f"/identities/{identity_id}", json=patch))

    def merge(self, identity_id: str, source_id: str) -> Identity:
        """Move the faces of `source_id` into `identity_id` and delete `source_id`."""
        body = self._request("POST", f"/identities/{identity_id}/merge", data={"source_id": source_id})
        return Identity.from_json(body)

    def delete(self, identity_id: str) -> None:
        """Remove a person and all their faces; NotFound for an unknown (or already deleted) id."""
        self._request("DELETE", f"/identities/{identity_id}")

    # ----------------------------------------------------------------- plumbing
    @staticmethod
    def _images(images: ImageInput | Iterable[ImageInput]) -> list[FileField]:
        chosen = [cast(ImageInput, images)] if _is_single_image(images) else list(cast(Iterable[ImageInput], images))
        return [("images", _image_part(image, f"image{index}")) for index, image in enumerate(chosen)]

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send one request; the decoded JSON answer, or the matching FRTritonError raised."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as error:
            raise Timeout(None, f"no answer from {self._http.base_url} within the timeout ({error})") from error
        except httpx.TransportError as error:
            raise ConnectionFailed(None, f"cannot reach {self._http.base_url}: {error}") from error
        if response.is_error:
            raise _error_for(response, sent_key=API_KEY_HEADER in self._http.headers)
        return response.json()

"""The exceptions of the FR Triton client, and which one an error answer of the service becomes."""

from __future__ import annotations

import email.utils
import json
from datetime import UTC, datetime

import httpx

# Prefixes of the 422 details the service gives when a photo has no (usable) face:
# "no face was detected in image_b" (detect/compare) and
# "no usable face in any image (image 0: no face detected); nothing was stored" (enrollment).
NO_FACE_DETAIL_PREFIXES = ("no face was detected", "no usable face")


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
    """404: unknown identity id (or a face id that is not one of that identity's)."""


class Conflict(InvalidRequest):
    """409: the request contradicts the gallery's state: removing a person's only face sample
    (delete the person instead); an enrollment with `reject_duplicates` of someone enrolled already;
    embeddings whose `model_sha256` is not the served recognizer's."""


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


def error_for(response: httpx.Response, key_hint: str = "") -> FRTritonError:
    """The exception for an error answer; `key_hint` says how this client gave (or did not give) a key."""
    status = response.status_code
    detail = _detail_text(response)
    retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
    if status == 503:
        return ServiceUnavailable(status, detail, retry_after)
    if status == 429:
        return RateLimited(status, detail, retry_after, key_hint)
    if status in (401, 403):
        return Unauthorized(status, detail, key_hint)
    if status == 404:
        return NotFound(status, detail)
    if status == 409:
        return Conflict(status, detail)
    if status == 422 and detail.lower().startswith(NO_FACE_DETAIL_PREFIXES):
        return NoFaceDetected(status, detail)
    if 400 <= status < 500:
        return InvalidRequest(status, detail)
    return FRTritonError(status, detail)

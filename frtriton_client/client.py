"""The synchronous FR Triton client: uploads, the API key, one method per route."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, cast

import httpx

from frtriton_client.errors import ConnectionFailed, Timeout, error_for
from frtriton_client.results import (
    Comparison,
    Embedding,
    Enrollment,
    Face,
    FaceSample,
    Identification,
    Identity,
    IdentityPage,
    ImageError,
    NamedEmbedding,
    Verification,
    embedding_or_error,
)
from frtriton_client.video_results import VideoJob, VideoJobFailed

API_KEY_HEADER = "X-API-Key"
API_KEY_ENV = "FRTRITON_API_KEY"
DEFAULT_TIMEOUT_S = 30.0
# Default page size of GET /identities; the service allows 1..1000.
DEFAULT_PAGE_SIZE = 100
DEFAULT_TOP_K = 5
VIDEO_POLL_S = 0.5  # between two looks at a running video job
GENERIC_CONTENT_TYPE = "application/octet-stream"

Vectors = Iterable[Iterable[float]]
"""Embeddings: lists (or numpy rows) of 512 floats made by the service's recognizer (`embed`, `embed_batch`)."""

ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]
"""A path, the encoded image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF), or a binary file object."""


FileField = tuple[str, tuple[str, bytes, str]]
# A request's images by form field: one image, or a list for a field that takes several ("images").
ImageFields = Mapping[str, ImageInput | list[ImageInput]]


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


def _base64(image: ImageInput, default_name: str) -> str:
    """One image as the base64 text of a JSON body."""
    return base64.b64encode(_image_part(image, default_name)[1]).decode("ascii")


def _key_hint(sent_key: bool) -> str:
    if sent_key:
        return "this client sent a key the service does not accept: check api_key, api_key_file or " + API_KEY_ENV
    return f"this client sent no key: pass api_key= or api_key_file=, or set {API_KEY_ENV}"


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


def _vector_lists(vectors: Vectors) -> list[list[float]]:
    """Embeddings as JSON lists (numpy rows and tuples included); the service checks their length and values."""
    return [[float(v) for v in vector] for vector in vectors]


def _duplicates(reject: bool) -> dict[str, str]:
    return {"on_duplicate": "reject"} if reject else {}


class FRTritonClient:
    """Synchronous client of one FR Triton service; use it as a context manager or call `close()`.

    The API key is sent as the `X-API-Key` header on every request (the service needs it for
    every gallery route): `api_key`, else the contents of `api_key_file` (e.g. a copy of the
    service's `data/api_key`), else the `FRTRITON_API_KEY` environment variable, else none.
    `timeout` is in seconds per request.

    Images travel as multipart form fields (raw bytes), the default; with `send_json=True` every
    request with images is a JSON body instead, each image in base64 (a third larger on the wire,
    so never the smaller choice: for proxies or gateways that only pass JSON). The answers are
    the same either way.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        api_key_file: str | os.PathLike[str] | None = None,
        send_json: bool = False,
    ) -> None:
        key = _resolve_key(api_key, api_key_file)
        headers = {API_KEY_HEADER: key} if key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.send_json = send_json

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
        body = self._request("POST", "/detect", **self._body({"image": image}))
        return [Face.from_json(f) for f in body["faces"]]

    def embed(self, image: ImageInput) -> Embedding:
        """The 512-float unit embedding of the photo's main face; NoFaceDetected if it has none."""
        return Embedding.from_json(self._request("POST", "/embedding", **self._body({"image": image})))

    def embed_batch(self, images: ImageInput | Iterable[ImageInput]) -> list[Embedding | ImageError]:
        """The main face's embedding of each photo, in order, in one request (at most the service's
        MAX_BATCH_IMAGES, 32 by default; InvalidRequest 413 above it). A photo the service cannot use
        (not an image, too large, no face) gets an ImageError in its place; the others are embedded."""
        body = self._request("POST", "/embeddings", **self._body({"images": self._images(images)}))
        return [embedding_or_error(r) for r in body["results"]]

    def compare(self, image_a: ImageInput, image_b: ImageInput) -> Comparison:
        """Whether the main faces of two photos are the same person."""
        body = self._request("POST", "/face-similarity", **self._body({"image_a": image_a, "image_b": image_b}))
        return Comparison.from_json(body)

    # ----------------------------------------------------------------- gallery
    def identify(
        self, image: ImageInput, top_k: int = DEFAULT_TOP_K, threshold: float | None = None
    ) -> list[Identification]:
        """Name every face of the photo from the gallery, or call it unknown (`identity` None).

        `threshold` overrides the service's `IDENTIFY_THRESHOLD` for this request.
        """
        fields: dict[str, Any] = {"top_k": top_k}
        if threshold is not None:
            fields["threshold"] = threshold
        body = self._request("POST", "/identify", **self._body({"image": image}, fields))
        return [Identification.from_json(f) for f in body["faces"]]

    def identify_embeddings(
        self, vectors: Vectors, top_k: int = DEFAULT_TOP_K, threshold: float | None = None,
        model_sha256: str | None = None,
    ) -> list[NamedEmbedding]:
        """Name each embedding from the gallery as `identify` names a face, one result per vector, in order.

        `model_sha256` (an `Embedding.model.sha256`): Conflict when the service serves another recognizer.
        InvalidRequest (422) for a vector that is not 512 finite numbers, or is zero.
        """
        body: dict[str, Any] = {"embeddings": _vector_lists(vectors), "top_k": top_k}
        if threshold is not None:
            body["threshold"] = threshold
        if model_sha256 is not None:
            body["model_sha256"] = model_sha256
        answer = self._request("POST", "/identify/embedding", json=body)
        return [NamedEmbedding.from_json(r) for r in answer["results"]]

    def verify(self, identity_id: str, image: ImageInput, threshold: float | None = None) -> Verification:
        """Is the photo's main face this enrolled person (1:1)? NotFound for an unknown id, NoFaceDetected
        without a face. `threshold` overrides the service's IDENTIFY_THRESHOLD for this request."""
        fields = {"threshold": threshold} if threshold is not None else {}
        body = self._request("POST", f"/identities/{identity_id}/verify", **self._body({"image": image}, fields))
        return Verification.from_json(body)

    def enroll(
        self,
        name: str,
        images: ImageInput | Iterable[ImageInput],
        metadata: Mapping[str, Any] | None = None,
        reject_duplicates: bool = False,
    ) -> Enrollment:
        """Add a person from one or more photos, each showing them as the clear subject.

        Unusable photos are listed in `rejected`; if none is usable NoFaceDetected is raised
        and nothing is stored. People enrolled before whom the photos match are listed in
        `possible_duplicates`; with `reject_duplicates` that is a Conflict instead, nothing stored.
        """
        fields: dict[str, Any] = {"name": name}
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        body = self._request("POST", "/identities", params=_duplicates(reject_duplicates),
                             **self._body({"images": self._images(images)}, fields))
        return Enrollment.from_json(body)

    def enroll_embeddings(
        self,
        name: str,
        vectors: Vectors,
        metadata: Mapping[str, Any] | None = None,
        model_sha256: str | None = None,
        reject_duplicates: bool = False,
    ) -> Enrollment:
        """Add a person from embeddings made by the service's recognizer, one sample each (at most its
        MAX_ENROLL_IMAGES). Conflict for a `model_sha256` that is not the served recognizer's, or with
        `reject_duplicates` for someone enrolled already; InvalidRequest (422) for an unusable vector."""
        body: dict[str, Any] = {"name": name, "embeddings": _vector_lists(vectors)}
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if model_sha256 is not None:
            body["model_sha256"] = model_sha256
        return Enrollment.from_json(
            self._request("POST", "/identities", params=_duplicates(reject_duplicates), json=body)
        )

    def add_faces(self, identity_id: str, images: ImageInput | Iterable[ImageInput]) -> Enrollment:
        """Add photos to an enrolled person; NotFound for an unknown id."""
        body = self._request("POST", f"/identities/{identity_id}/faces", **self._body({"images": self._images(images)}))
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

    def faces(self, identity_id: str) -> list[FaceSample]:
        """A person's face samples, oldest first, each with its quality and head pose at enrollment."""
        body = self._request("GET", f"/identities/{identity_id}/faces")
        return [FaceSample.from_json(f) for f in body["faces"]]

    def delete_face(self, identity_id: str, face_id: int) -> Identity:
        """Remove one face sample; the person as they are now. NotFound for an unknown identity or a face
        that is not theirs; Conflict for their only face (delete the person instead)."""
        return Identity.from_json(self._request("DELETE", f"/identities/{identity_id}/faces/{int(face_id)}"))

    def delete(self, identity_id: str) -> None:
        """Remove a person and all their faces; NotFound for an unknown (or already deleted) id."""
        self._request("DELETE", f"/identities/{identity_id}")

    # ----------------------------------------------------------------- video
    def submit_video(
        self,
        video: ImageInput,
        sample_fps: float | None = None,
        identify: bool = True,
        annotate: bool = False,
        liveness: bool = False,
        top_k: int = DEFAULT_TOP_K,
        threshold: float | None = None,
    ) -> VideoJob:
        """Start a video job (a path, bytes or a binary file; a path is streamed from disk); the queued job.

        ServiceUnavailable (with `retry_after`) when every video worker and queue place is taken.
        """
        params: dict[str, Any] = {"identify": identify, "annotate": annotate, "liveness": liveness, "top_k": top_k}
        if sample_fps is not None:
            params["sample_fps"] = sample_fps
        if threshold is not None:
            params["threshold"] = threshold
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
        if isinstance(video, str | os.PathLike):
            name = Path(video).name
            content_type = mimetypes.guess_type(name)[0] or GENERIC_CONTENT_TYPE
            with open(video, "rb") as file:  # streamed: a long video is never held in memory
                body = self._request("POST", "/videos", params=params, files={"video": (name, file, content_type)})
            return VideoJob.from_json(body)
        name, data, content_type = _image_part(video, "video")
        body = self._request("POST", "/videos", params=params, files={"video": (name, data, content_type)})
        return VideoJob.from_json(body)

    def video_job(self, job_id: str, include_faces: bool = False, include_embeddings: bool = False) -> VideoJob:
        """The job as it is now; NotFound once removed, expired, or after a restart of the service."""
        params = {"include_faces": str(include_faces).lower(), "include_embeddings": str(include_embeddings).lower()}
        return VideoJob.from_json(self._request("GET", f"/videos/{job_id}", params=params))

    def cancel_video(self, job_id: str) -> None:
        """Cancel a queued or running job, or remove a finished one."""
        self._request("DELETE", f"/videos/{job_id}")

    def annotated_video(self, job_id: str) -> bytes:
        """The annotated MP4 of a job started with `annotate=True` (NotFound before it is done)."""
        return self._send("GET", f"/videos/{job_id}/annotated").content

    def identify_video(
        self,
        video: ImageInput,
        wait: bool = True,
        progress: Callable[[VideoJob], None] | None = None,
        poll_s: float = VIDEO_POLL_S,
        include_faces: bool = False,
        include_embeddings: bool = False,
        **options: Any,
    ) -> VideoJob:
        """Who appears in the video, when, and how sure: submit it and, with `wait`, poll until it ends.

        `progress(job)` is called after every look (`job.progress` is the fraction read). `options`
        are `submit_video`'s. Raises VideoJobFailed when the job fails; returns the finished job
        (its `result`), or the queued job when `wait` is False.
        """
        job = self.submit_video(video, **options)
        return self.wait_video(job, progress, poll_s, include_faces, include_embeddings) if wait else job

    def wait_video(
        self,
        job: VideoJob,
        progress: Callable[[VideoJob], None] | None = None,
        poll_s: float = VIDEO_POLL_S,
        include_faces: bool = False,
        include_embeddings: bool = False,
    ) -> VideoJob:
        """Poll a submitted job until it ends; the finished job, or VideoJobFailed."""
        while True:
            job = self.video_job(job.id, include_faces, include_embeddings)
            if progress is not None:
                progress(job)
            if job.finished:
                break
            time.sleep(poll_s)
        if job.status == "failed":
            raise VideoJobFailed(job.error_status, job.error or "the video job failed")
        return job

    # ----------------------------------------------------------------- plumbing
    @staticmethod
    def _images(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
        return [cast(ImageInput, images)] if _is_single_image(images) else list(cast(Iterable[ImageInput], images))

    def _body(self, images: ImageFields, fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """httpx arguments of a request with images: a multipart form, or with `send_json` a JSON body."""
        fields = dict(fields or {})
        if self.send_json:
            encoded: dict[str, Any] = {}
            for name, value in images.items():
                if isinstance(value, list):
                    encoded[name] = [_base64(image, f"image{i}") for i, image in enumerate(value)]
                else:
                    encoded[name] = _base64(value, name)
            return {"json": {**encoded, **fields}}
        files: list[FileField] = []
        for name, value in images.items():
            if isinstance(value, list):
                files += [(name, _image_part(image, f"image{i}")) for i, image in enumerate(value)]
            else:
                files.append((name, _image_part(value, name)))
        # A form carries text: numbers as their digits, a JSON object (metadata) as its JSON text.
        data = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}
        return {"files": files, "data": data}

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """Send one request; the decoded JSON answer, or the matching FRTritonError raised."""
        return self._send(method, url, **kwargs).json()

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send one request; the answer, or the matching FRTritonError raised."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as error:
            raise Timeout(None, f"no answer from {self._http.base_url} within the timeout ({error})") from error
        except httpx.TransportError as error:
            raise ConnectionFailed(None, f"cannot reach {self._http.base_url}: {error}") from error
        if response.is_error:
            raise error_for(response, _key_hint(API_KEY_HEADER in self._http.headers))
        return response

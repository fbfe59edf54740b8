"""Routes of video jobs: upload a video (202 + Location), follow it, fetch its result or annotated copy, cancel it.

Validation and shapes only: the work is in `usecases.video_jobs` (queue, workers, files) and
`usecases.video_analysis` (frames, tracks, identities). The body of `POST /videos` is read by
hand, after the key check and the room check, so neither a caller without the key nor a full
queue costs the service an upload: a multipart form with the file in `video`, a JSON object
`{"video": "<base64>"}` (small clips: within MAX_REQUEST_BYTES), or the raw file as the body
(`Content-Type: video/mp4`, `application/octet-stream`, ...).

A job that identifies (identify=true, the default) needs the `X-API-Key` for every call about
it, since its result names enrolled people; identify=false only tracks faces and needs no key.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile

from api.bodies import BadBody, decode_base64, is_json
from api.dependencies import API_KEY_SCHEME, SettingsDep, VideosDep, require_key
from api.video_schemas import VIDEO_ERRORS, VideoDeleted, VideoJobOut, job_out
from errors import AnnotatedVideoMissing
from usecases.video_analysis import VideoOptions
from usecases.video_jobs import Status, VideoJob
from video.annotate import MEDIA_TYPE as MP4_MEDIA_TYPE

router = APIRouter(tags=["videos"])
FORM_OVERHEAD_BYTES = 1024 * 1024  # a multipart form's boundaries and headers around the video
FIELD = "video"
KeyHeader = Annotated[str | None, Security(API_KEY_SCHEME)]
# The key is needed only for jobs that identify: documented as optional (the key, or nothing).
OPTIONAL_KEY: dict[str, Any] = {"security": [{}]}  # added to the APIKey requirement FastAPI writes

# The request body, documented by hand (it is read after the key check): a form, JSON, or the raw file.
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "MP4 (H.264, MPEG-4), AVI (MJPEG), WebM, ...: at most MAX_VIDEO_BYTES",
                        }
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {
                        FIELD: {
                            "type": "string",
                            "description": "the file in base64 (or a data: URL); small clips only: "
                            "the JSON body counts against MAX_REQUEST_BYTES",
                        }
                    },
                },
                "example": {FIELD: "AAAAIGZ0eXBpc29tAAACAGlzb21pc28yYXZjMW1wNDE="},
            },
            "video/mp4": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
JOB_EXAMPLE = {
    "id": "4c3f0e2a9b8d47e6a1f5c2d3b4a59687",
    "status": "done",
    "progress": 1.0,
    "frames_read": 300,
    "created_at": "2026-12-04T18:30:00+00:00",
    "video": {"width": 1280, "height": 720, "fps": 30.0, "frames": 300, "duration_s": 10.0, "rotation": 0},
    "options": {
        "sample_fps": 5.0,
        "identify": True,
        "top_k": 5,
        "threshold": None,
        "liveness": False,
        "annotate": False,
    },
    "result": {
        "people": [{"id": "5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b", "name": "Ada Lovelace", "seconds": 6.2, "tracks": [1]}],
        "unknown_tracks": 1,
        "frames_read": 300,
        "frames_sampled": 50,
        "duration_s": 10.0,
        "processing_s": 2.1,
        "threshold": 0.3,
        "tracks": [
            {
                "track_id": 1,
                "first_s": 0.0,
                "last_s": 6.0,
                "frames": 31,
                "best_face": {
                    "time_s": 2.4,
                    "frame": 72,
                    "bbox": [412.0, 188.5, 530.2, 340.7],
                    "score": 0.86,
                    "quality": 0.71,
                },
                "identity": {"id": "5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b", "name": "Ada Lovelace", "similarity": 0.64},
                "matches": [{"id": "5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b", "name": "Ada Lovelace", "similarity": 0.64}],
            },
            {
                "track_id": 2,
                "first_s": 6.2,
                "last_s": 9.8,
                "frames": 19,
                "best_face": {
                    "time_s": 8.0,
                    "frame": 240,
                    "bbox": [600.0, 200.0, 700.0, 330.0],
                    "score": 0.81,
                    "quality": 0.66,
                },
                "identity": None,
                "matches": [],
            },
        ],
        "warnings": [],
    },
}


class StreamUpload:
    """The raw request body as an `Upload` (`read(size)`), read as it arrives."""

    def __init__(self, chunks: AsyncIterator[bytes], filename: str) -> None:
        self.chunks = chunks
        self.filename = filename
        self.buffer = b""
        self.done = False

    async def read(self, size: int = -1) -> bytes:
        while not self.done and (size < 0 or len(self.buffer) < size):
            chunk = await anext(self.chunks, None)
            if chunk is None:
                self.done = True
            else:
                self.buffer += chunk
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    async def close(self) -> None:
        self.buffer = b""


def missing_field() -> RequestValidationError:
    return RequestValidationError([{"type": "missing", "loc": ("body", FIELD), "msg": "Field required", "input": None}])


async def video_upload(request: Request, max_json_bytes: int) -> UploadFile | StreamUpload:
    """The uploaded video, however it was sent (see the module docstring)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        video = form.get(FIELD)
        if not isinstance(video, UploadFile):
            raise missing_field()
        return video
    if is_json(content_type):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_json_bytes:
                raise HTTPException(
                    413,
                    f"a JSON body is at most {max_json_bytes} bytes (MAX_REQUEST_BYTES): "
                    "send a larger video as a multipart form or as the raw body",
                )
        try:
            value = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
            ) from None
        if not isinstance(value, dict) or not isinstance(value.get(FIELD), str):
            raise missing_field()
        try:
            data, _ = decode_base64(value[FIELD], FIELD)
        except BadBody as error:
            raise error.error from None
        return UploadFile(io.BytesIO(data), size=len(data), filename=FIELD)
    return StreamUpload(request.stream(), FIELD)


async def check_key(request: Request, job: VideoJob, given: str | None) -> None:
    """A job that identifies is only shown to, and removed by, callers with the key."""
    if job.options.identify:
        await require_key(request, given)


@router.post(
    "/videos",
    status_code=202,
    response_model=VideoJobOut,
    response_model_exclude_unset=True,
    responses={
        202: {"description": "queued; `Location` is the job", "headers": {"Location": {"schema": {"type": "string"}}}},
        **VIDEO_ERRORS,
    },
    openapi_extra={**REQUEST_BODY, **OPTIONAL_KEY},
    summary="Start a job finding, tracking and identifying the people in a video",
)
async def submit_video(
    request: Request,
    response: Response,
    jobs: VideosDep,
    settings: SettingsDep,
    key: KeyHeader = None,
    sample_fps: Annotated[
        float | None,
        Query(
            gt=0,
            le=60,
            description="frames analysed per second of video; "
            "default VIDEO_SAMPLE_FPS (5), the source's rate when lower",
        ),
    ] = None,
    identify: Annotated[bool, Query(description="name each track from the gallery (needs the X-API-Key)")] = True,
    top_k: Annotated[int, Query(ge=1, le=100, description="matches listed per track")] = 5,
    threshold: Annotated[float | None, Query(ge=-1, le=1, description="default IDENTIFY_THRESHOLD")] = None,
    liveness: Annotated[bool, Query(description="a per-track liveness score (503 without the model)")] = False,
    annotate: Annotated[
        bool, Query(description="also draw an MP4 with boxes and names: GET /videos/{id}/annotated")
    ] = False,
) -> VideoJobOut:
    if identify:
        await require_key(request, key)
    jobs.ensure_room()  # before the upload is read: a full queue costs the service nothing
    options = VideoOptions(sample_fps or settings.video_sample_fps, identify, top_k, threshold, liveness, annotate)
    upload = await video_upload(request, settings.max_request_bytes)
    try:
        job = await jobs.submit(upload, options)
    finally:
        await upload.close()
    response.headers["Location"] = f"/videos/{job.id}"
    return job_out(job)


@router.get(
    "/videos/{job_id}",
    response_model=VideoJobOut,
    response_model_exclude_unset=True,
    responses={
        200: {"content": {"application/json": {"example": JOB_EXAMPLE}}},
        **{c: VIDEO_ERRORS[c] for c in (401, 404, 429)},
    },
    summary="A video job: its status, progress and, once done, its result",
    openapi_extra=OPTIONAL_KEY,
)
async def get_video(
    request: Request,
    jobs: VideosDep,
    job_id: str,
    key: KeyHeader = None,
    include_faces: Annotated[bool, Query(description="each track's best face as an aligned PNG crop")] = False,
    include_embeddings: Annotated[bool, Query(description="each track's embedding (512 floats)")] = False,
) -> VideoJobOut:
    job = jobs.get(job_id)
    await check_key(request, job, key)
    return job_out(job, include_faces, include_embeddings)


@router.get(
    "/videos/{job_id}/annotated",
    response_class=FileResponse,
    responses={
        200: {"content": {MP4_MEDIA_TYPE: {}}, "description": "the sampled frames with boxes and names"},
        **{c: VIDEO_ERRORS[c] for c in (401, 404, 429)},
    },
    summary="The annotated MP4 of a job made with annotate=true",
    openapi_extra=OPTIONAL_KEY,
)
async def get_annotated(request: Request, jobs: VideosDep, job_id: str, key: KeyHeader = None) -> FileResponse:
    job = jobs.get(job_id)
    await check_key(request, job, key)
    if job.annotated is None:
        raise AnnotatedVideoMissing("this job has no annotated video: ask for one with POST /videos?annotate=true")
    if job.status is not Status.DONE or not job.annotated.is_file():
        raise AnnotatedVideoMissing(f"the annotated video is made when the job is done; it is {job.status.value}")
    return FileResponse(job.annotated, media_type=MP4_MEDIA_TYPE, filename=f"{job.id}.mp4")


@router.delete(
    "/videos/{job_id}",
    response_model=VideoDeleted,
    responses={c: VIDEO_ERRORS[c] for c in (401, 404, 429)},
    summary="Cancel a queued or running job, or remove a finished one",
    openapi_extra=OPTIONAL_KEY,
)
async def delete_video(request: Request, jobs: VideosDep, job_id: str, key: KeyHeader = None) -> VideoDeleted:
    job = jobs.get(job_id)
    await check_key(request, job, key)
    was = jobs.delete(job_id)
    return VideoDeleted(id=job_id, status="cancelled" if was in (Status.QUEUED, Status.RUNNING) else "deleted")

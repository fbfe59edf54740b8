"""Response schemas of the video routes, and the shaping of a job into them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.error_status import status_for
from api.gallery import MatchOut, match_out
from api.schemas import Error, ImageError, Liveness, liveness_json
from imaging.draw import PNG_MEDIA_TYPE, data_url, encode_png
from usecases.video_analysis import TrackResult, VideoResult
from usecases.video_jobs import Status, VideoJob


class VideoInfoOut(BaseModel):
    width: int = Field(examples=[1280], description="of the frames as shown (rotation applied)")
    height: int = Field(examples=[720])
    fps: float = Field(examples=[30.0], description="the container's frame rate")
    frames: int | None = Field(examples=[1800], description="the container's frame count (null when it states none)")
    duration_s: float | None = Field(examples=[60.0])
    rotation: int = Field(examples=[0], description="degrees the stored frames were turned to be shown")


class VideoOptionsOut(BaseModel):
    sample_fps: float = Field(examples=[5.0])
    identify: bool
    top_k: int
    threshold: float | None
    liveness: bool
    annotate: bool


class BestFaceOut(BaseModel):
    time_s: float = Field(examples=[3.4], description="time of its frame in the video")
    frame: int = Field(examples=[102], description="index of its frame in the source, from 0")
    bbox: list[float] = Field(examples=[[412.0, 188.5, 530.2, 340.7]])
    score: float = Field(examples=[0.86], description="detector confidence")
    quality: float = Field(examples=[0.71], description="detector score x size x frontality x sharpness, in [0, 1]")
    aligned: str | None = Field(
        default=None,
        description="only with include_faces=true: the aligned 112x112 crop as a data:image/png;base64 URL",
    )


class TrackOut(BaseModel):
    track_id: int = Field(examples=[1])
    first_s: float = Field(examples=[0.0], description="time of the track's first sampled frame")
    last_s: float = Field(examples=[12.6], description="time of its last sampled frame")
    frames: int = Field(examples=[64], description="sampled frames it appears in")
    best_face: BestFaceOut
    identity: MatchOut | None = Field(
        default=None,
        description="the person the track's embedding names, or null (unknown); only when the job identifies",
    )
    matches: list[MatchOut] | None = Field(default=None, description="the top_k nearest people, as /identify gives")
    embedding: list[float] | None = Field(
        default=None,
        description="only with include_embeddings=true: the normalised mean of the track's good faces (512 floats)",
    )
    liveness: Liveness | None = Field(
        default=None, description="only with liveness=true: the mean real score of the track's faces"
    )


class PersonOut(BaseModel):
    id: str
    name: str = Field(examples=["Ada Lovelace"])
    seconds: float = Field(
        examples=[41.2], description="on screen: sampled frames with any of their tracks x the sampling step"
    )
    tracks: list[int] = Field(examples=[[1, 4]])


class VideoResultOut(BaseModel):
    people: list[PersonOut] = Field(description="each identified person once, in order of first appearance")
    unknown_tracks: int
    frames_read: int
    frames_sampled: int
    duration_s: float = Field(description="of the video read (frames read / fps)")
    processing_s: float = Field(description="the job's working time, from its first frame to its result")
    threshold: float | None = Field(description="the similarity a track was named at; null without identification")
    tracks: list[TrackOut]
    warnings: list[str] = Field(description="e.g. a video that ended before the length its container states")
    annotated: str | None = Field(default=None, description="with annotate=true: where the annotated MP4 is")


class VideoJobOut(BaseModel):
    id: str = Field(examples=["4c3f0e2a9b8d47e6a1f5c2d3b4a59687"])
    status: Status = Field(description="queued, running, done or failed")
    progress: float | None = Field(description="frames read / the video's frame count, in [0, 1]", examples=[0.42])
    frames_read: int = Field(examples=[756])
    created_at: str
    video: VideoInfoOut
    options: VideoOptionsOut
    result: VideoResultOut | None = Field(default=None, description="when done")
    error: ImageError | None = Field(default=None, description="when failed: the status and message")


class VideoDeleted(BaseModel):
    id: str
    status: str = Field(examples=["cancelled"], description="cancelled (it was queued or running) or deleted")


VIDEO_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "not a video OpenCV can decode, or a JSON body's video not base64"},
    401: {"model": Error, "description": "identify=true (the default) without the right X-API-Key"},
    404: {"model": Error, "description": "no job with this id (removed, expired, or made before a restart)"},
    413: {"model": Error, "description": "above MAX_VIDEO_BYTES, MAX_VIDEO_SECONDS or the per-frame pixel limit"},
    429: {"model": Error, "description": "too many wrong X-API-Key values from this address (see Retry-After)"},
    503: {
        "model": Error,
        "description": "every video worker busy and the queue full (see Retry-After), or "
        "liveness=true without the anti-spoofing model",
    },
}


def error_status(error: Exception) -> int:
    """The HTTP status a job's error stands for; 500 for an internal error (the plain base class)."""
    try:
        return status_for(error)
    except StopIteration:
        return 500


def job_out(job: VideoJob, include_faces: bool = False, include_embeddings: bool = False) -> VideoJobOut:
    info, options = job.info, job.options
    out = VideoJobOut(
        id=job.id,
        status=job.status,
        progress=job.progress,
        frames_read=job.frames_read,
        created_at=job.created_at,
        video=VideoInfoOut(
            width=info.width,
            height=info.height,
            fps=round(info.fps, 3),
            frames=info.frame_count,
            duration_s=round(info.duration_s, 3) if info.duration_s else None,
            rotation=info.rotation,
        ),
        options=VideoOptionsOut(
            sample_fps=options.sample_fps,
            identify=options.identify,
            top_k=options.top_k,
            threshold=options.threshold,
            liveness=options.liveness,
            annotate=options.annotate,
        ),
    )
    if job.result is not None:
        out.result = result_out(job, job.result, include_faces, include_embeddings)
    if job.error is not None:
        out.error = ImageError(status=error_status(job.error), detail=job.error.message)
    return out


def result_out(job: VideoJob, result: VideoResult, include_faces: bool, include_embeddings: bool) -> VideoResultOut:
    out = VideoResultOut(
        people=[PersonOut(id=p.id, name=p.name, seconds=p.seconds, tracks=list(p.track_ids)) for p in result.people],
        unknown_tracks=result.unknown_tracks,
        frames_read=result.frames_read,
        frames_sampled=result.frames_sampled,
        duration_s=result.duration_s,
        processing_s=result.processing_s,
        threshold=result.threshold,
        tracks=[
            track_out(t, job.options.identify, job.options.liveness, include_faces, include_embeddings)
            for t in result.tracks
        ],
        warnings=result.warnings,
    )
    if job.annotated is not None:
        out.annotated = f"/videos/{job.id}/annotated"
    return out


def track_out(
    track: TrackResult, identify: bool, liveness: bool, include_faces: bool, include_embeddings: bool
) -> TrackOut:
    best = track.best
    face = BestFaceOut(
        time_s=round(best.time_s, 3),
        frame=best.frame_index,
        bbox=[round(float(v), 2) for v in best.box],
        score=round(best.score, 4),
        quality=round(best.quality, 4),
    )
    if include_faces:
        face.aligned = data_url(encode_png(track.crop), PNG_MEDIA_TYPE)
    out = TrackOut(
        track_id=track.track_id,
        first_s=round(track.first_s, 3),
        last_s=round(track.last_s, 3),
        frames=track.frames,
        best_face=face,
    )
    if identify:
        out.identity = match_out(track.identity) if track.identity else None
        out.matches = [match_out(m) for m in track.matches]
    if include_embeddings:
        out.embedding = [round(float(v), 6) for v in track.embedding]
    if liveness:
        out.liveness = liveness_json(track.liveness)
    return out

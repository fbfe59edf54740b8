"""The answers of the video routes: a job, its tracks and the people seen (frozen dataclasses named as the JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from frtriton_client.errors import FRTritonError
from frtriton_client.results import Match

FINISHED = ("done", "failed")


class VideoJobFailed(FRTritonError):
    """A video job ended in `failed`: `status` is the HTTP status its error stands for (503: Triton was down)."""


@dataclass(frozen=True)
class BestFace:
    """A track's best face (highest quality): when and where it was seen."""

    time_s: float
    frame: int
    bbox: tuple[float, float, float, float]
    score: float
    quality: float
    aligned: str | None = None
    """With include_faces: the aligned crop as a data:image/png;base64 URL."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BestFace:
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        return cls(
            float(data["time_s"]),
            int(data["frame"]),
            (x1, y1, x2, y2),
            float(data["score"]),
            float(data["quality"]),
            data.get("aligned"),
        )


@dataclass(frozen=True)
class VideoTrack:
    """One face followed through the video."""

    track_id: int
    first_s: float
    last_s: float
    frames: int
    best_face: BestFace
    identity: Match | None
    """Who the track is (None: unknown, or the job did not identify)."""
    matches: tuple[Match, ...]
    embedding: tuple[float, ...] | None = None
    real_score: float | None = None
    """With liveness: the mean real score of the track's faces."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VideoTrack:
        identity = data.get("identity")
        liveness = data.get("liveness")
        return cls(
            track_id=int(data["track_id"]),
            first_s=float(data["first_s"]),
            last_s=float(data["last_s"]),
            frames=int(data["frames"]),
            best_face=BestFace.from_json(data["best_face"]),
            identity=Match.from_json(identity) if identity else None,
            matches=tuple(Match.from_json(m) for m in data.get("matches") or ()),
            embedding=tuple(float(v) for v in data["embedding"]) if data.get("embedding") else None,
            real_score=float(liveness["real_score"]) if liveness else None,
        )


@dataclass(frozen=True)
class PersonSeen:
    """An identified person: on-screen seconds and the tracks they were seen in."""

    id: str
    name: str
    seconds: float
    tracks: tuple[int, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PersonSeen:
        return cls(str(data["id"]), str(data["name"]), float(data["seconds"]), tuple(int(t) for t in data["tracks"]))


@dataclass(frozen=True)
class VideoResult:
    people: tuple[PersonSeen, ...]
    unknown_tracks: int
    frames_read: int
    frames_sampled: int
    duration_s: float
    processing_s: float
    tracks: tuple[VideoTrack, ...]
    warnings: tuple[str, ...]
    annotated: str | None = None
    """With annotate: the path of the annotated MP4 (`FRTritonClient.annotated_video`)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VideoResult:
        return cls(
            people=tuple(PersonSeen.from_json(p) for p in data["people"]),
            unknown_tracks=int(data["unknown_tracks"]),
            frames_read=int(data["frames_read"]),
            frames_sampled=int(data["frames_sampled"]),
            duration_s=float(data["duration_s"]),
            processing_s=float(data["processing_s"]),
            tracks=tuple(VideoTrack.from_json(t) for t in data["tracks"]),
            warnings=tuple(str(w) for w in data.get("warnings", ())),
            annotated=data.get("annotated"),
        )


@dataclass(frozen=True)
class VideoJob:
    """A video job as last seen: `status` queued, running, done or failed; `result` once done."""

    id: str
    status: str
    progress: float | None
    """Frames read / the video's frame count, in [0, 1] (None when the container states no count)."""
    frames_read: int
    duration_s: float | None
    result: VideoResult | None = None
    error: str | None = None
    """When failed: why (the service's message)."""
    error_status: int | None = None
    """When failed: the HTTP status the error stands for (503: Triton was unavailable)."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VideoJob:
        result, error = data.get("result"), data.get("error")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            progress=None if data.get("progress") is None else float(data["progress"]),
            frames_read=int(data.get("frames_read", 0)),
            duration_s=(data.get("video") or {}).get("duration_s"),
            result=VideoResult.from_json(result) if result else None,
            error=str(error["detail"]) if error else None,
            error_status=int(error["status"]) if error else None,
        )

"""The answers of the FR Triton client: frozen dataclasses named as the API's JSON keys."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HeadPose:
    """A face's head pose in degrees; 0 is frontal (the pose of the ArcFace alignment template)."""

    yaw: float
    """Turned sideways: positive when the nose moves towards the image's right, ±90 a profile."""
    pitch: float
    """Tilted: positive looking down, negative looking up."""
    roll: float
    """Tilted in the image plane: positive clockwise on screen."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HeadPose:
        return cls(yaw=float(data["yaw"]), pitch=float(data["pitch"]), roll=float(data["roll"]))


@dataclass(frozen=True)
class EnrollmentQuality:
    """Would enrollment take this face? Measured as the service's enrollment gate measures."""

    sharpness: float
    """Variance of the Laplacian of the grey 112x112 aligned crop (enrollment: at least ENROLL_MIN_SHARPNESS)."""
    face_size: float
    """Side in image pixels of the square the aligned crop covers (enrollment: at least ENROLL_MIN_FACE_SIZE)."""
    enrollable: bool
    """The face passes every check enrollment makes of a face: `reasons` is empty. (Enrollment also
    refuses a photo in which no face is clearly the subject.)"""
    reasons: tuple[str, ...]
    """Every check the face fails, worded as enrollment words them; enrollment names the first."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnrollmentQuality:
        return cls(
            sharpness=float(data["sharpness"]),
            face_size=float(data["face_size"]),
            enrollable=bool(data["enrollable"]),
            reasons=tuple(str(r) for r in data["reasons"]),
        )


def _pose(data: Mapping[str, Any]) -> HeadPose | None:
    return HeadPose.from_json(data["pose"]) if data.get("pose") is not None else None


def _quality(data: Mapping[str, Any]) -> EnrollmentQuality | None:
    return EnrollmentQuality.from_json(data["quality"]) if data.get("quality") is not None else None


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the image as displayed (EXIF orientation applied)."""

    bbox: tuple[float, float, float, float]
    """x1, y1, x2, y2."""
    score: float
    """Detector confidence in [0, 1]."""
    landmarks: tuple[tuple[float, float], ...]
    """Left eye, right eye, nose tip, left and right mouth corners as (x, y)."""
    pose: HeadPose | None = None
    """None from a service that does not send it (before face attributes), and on /liveness."""
    quality: EnrollmentQuality | None = None
    """None from a service that does not send it (before face attributes), and on /liveness."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Face:
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        return cls(
            bbox=(x1, y1, x2, y2),
            score=float(data["score"]),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
            pose=_pose(data),
            quality=_quality(data),
        )


@dataclass(frozen=True)
class RecognizerModel:
    """The recognizer that made an embedding (GET /models): embeddings of two models cannot be compared."""

    name: str
    """The network, e.g. "w600k_mbf"."""
    sha256: str
    """sha256 of its ONNX file: pass it as `model_sha256` with embeddings sent back to the service."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RecognizerModel | None:
        return None if data is None else cls(name=str(data["name"]), sha256=str(data["sha256"]))


@dataclass(frozen=True)
class Embedding:
    """The L2-normalised embedding of a photo's main face (the largest face nearest the centre)."""

    embedding: tuple[float, ...]
    face: Face
    model: RecognizerModel | None = None
    """The recognizer that made it; None when its config names no sha256 (or from an older service)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Embedding:
        return cls(embedding=tuple(float(v) for v in data["embedding"]), face=Face.from_json(data["face"]),
                   model=RecognizerModel.from_json(data.get("model")))


@dataclass(frozen=True)
class ImageError:
    """An image of a batch the service could not use; the batch's other images were answered."""

    status: int
    """The HTTP status a request with this image alone would have got (400 not an image, 413 too large,
    422 no face)."""
    detail: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageError:
        return cls(status=int(data["status"]), detail=str(data["detail"]))


def embedding_or_error(data: Mapping[str, Any]) -> Embedding | ImageError:
    """One entry of POST /embeddings' `results`."""
    return ImageError.from_json(data["error"]) if "error" in data else Embedding.from_json(data)


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
    pose: HeadPose | None = None
    """None from a service that does not send it (before face attributes)."""
    quality: EnrollmentQuality | None = None
    """None from a service that does not send it (before face attributes)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identification:
        x1, y1, x2, y2 = (float(v) for v in data["bbox"])
        identity = data.get("identity")
        return cls(
            bbox=(x1, y1, x2, y2),
            score=float(data["score"]),
            identity=Match.from_json(identity) if identity is not None else None,
            matches=tuple(Match.from_json(m) for m in data["matches"]),
            pose=_pose(data),
            quality=_quality(data),
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
    face_ids: tuple[int, ...] = ()
    """Ids of the samples this request stored, in the order of the accepted images (see `faces`)."""
    possible_duplicates: tuple[Match, ...] = ()
    """A new person only: the people enrolled before whom one of the new faces identifies (at the
    service's IDENTIFY_THRESHOLD), each with their best similarity, most similar first."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Enrollment:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            num_faces=int(data["num_faces"]),
            rejected=tuple(Rejected.from_json(r) for r in data["rejected"]),
            face_ids=tuple(int(i) for i in data.get("face_ids", ())),
            possible_duplicates=tuple(Match.from_json(m) for m in data.get("possible_duplicates") or ()),
        )


@dataclass(frozen=True)
class Verification:
    """A photo's main face checked against one enrolled person (1:1): `same_person` is `similarity >= threshold`."""

    similarity: float
    """The face's score for the person, as identification scores people."""
    same_person: bool
    threshold: float
    face: Face
    identity_id: str
    identity_name: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Verification:
        return cls(
            similarity=float(data["similarity"]),
            same_person=bool(data["same_person"]),
            threshold=float(data["threshold"]),
            face=Face.from_json(data["face"]),
            identity_id=str(data["identity"]["id"]),
            identity_name=str(data["identity"]["name"]),
        )


@dataclass(frozen=True)
class NamedEmbedding:
    """One embedding named from the gallery, as `Identification` names a face."""

    identity: Match | None
    """The best match when it reaches the threshold, else None (unknown)."""
    matches: tuple[Match, ...]
    """Up to `top_k` nearest people, best first, whatever the threshold."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NamedEmbedding:
        identity = data.get("identity")
        return cls(identity=Match.from_json(identity) if identity is not None else None,
                   matches=tuple(Match.from_json(m) for m in data["matches"]))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class FaceQuality:
    """How a face sample measured at enrollment (None: stored before these were kept)."""

    sharpness: float | None
    """Variance of the Laplacian of the grey 112x112 aligned crop."""
    face_size: float | None
    """Side in image pixels of the square the aligned crop covers."""
    detection_score: float | None
    """The detector's confidence in [0, 1]."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaceQuality:
        return cls(_number(data.get("sharpness")), _number(data.get("face_size")), _number(data.get("detection_score")))


@dataclass(frozen=True)
class Pose:
    """Head pose at enrollment in degrees (None: stored before it was kept)."""

    yaw: float | None
    """Positive turned towards the image's right."""
    pitch: float | None
    """Positive looking down."""
    roll: float | None
    """Positive clockwise on screen."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pose:
        return cls(_number(data.get("yaw")), _number(data.get("pitch")), _number(data.get("roll")))


@dataclass(frozen=True)
class FaceSample:
    """One stored face sample of a person."""

    id: int
    created_at: str
    """ISO 8601 timestamp with offset."""
    quality: FaceQuality
    pose: Pose
    source: str | None
    """The uploaded file's name."""
    has_crop: bool
    """Its aligned crop is stored, so another recognizer can re-embed it."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FaceSample:
        source = data.get("source")
        return cls(
            id=int(data["id"]),
            created_at=str(data["created_at"]),
            quality=FaceQuality.from_json(data.get("quality") or {}),
            pose=Pose.from_json(data.get("pose") or {}),
            source=None if source is None else str(source),
            has_crop=bool(data.get("has_crop", False)),
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

"""What a gallery is: the `Gallery` interface both backends implement, and its types.

`sqlite.SqliteGallery` is the embedded default, `postgres.PgGallery` the shared
PostgreSQL/pgvector one for several replicas; `factory.open_gallery` picks one. Both take
their types from here, so neither imports the other.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

EMBEDDING_DIM = 512
SCORINGS = ("centroid", "best_sample")


class IdentityNotFound(Exception):
    """No identity with this id (HTTP 404)."""

    def __init__(self, identity_id: str) -> None:
        super().__init__(f"no identity with id {identity_id!r}")
        self.message = str(self)


class FaceNotFound(Exception):
    """No face sample with this id belongs to this identity (HTTP 404)."""

    def __init__(self, identity_id: str, face_id: int) -> None:
        super().__init__(f"identity {identity_id!r} has no face with id {face_id}")
        self.message = str(self)


class LastFace(Exception):
    """Removing an identity's only face sample would leave a person nobody can be matched to (HTTP 409)."""

    def __init__(self, identity_id: str, face_id: int) -> None:
        super().__init__(
            f"face {face_id} is the only face of identity {identity_id!r}: delete the identity instead "
            f"(DELETE /identities/{identity_id})"
        )
        self.message = str(self)


class ModelChangeIncomplete(Exception):
    """A new model fingerprint cannot be recorded while samples of another model remain."""

    def __init__(self, remaining: int, target: ModelFingerprint) -> None:
        super().__init__(
            f"{remaining} face samples are not embedded by {target.describe()} yet (stored while the re-embedding "
            "ran?): run the re-embedding again"
        )
        self.message = str(self)
        self.remaining = remaining


@dataclass(frozen=True)
class Identity:
    id: str
    name: str
    metadata: dict
    num_faces: int
    created_at: str
    # The ids of the samples the call that returned this stored (create, add_faces), in the
    # order of its embeddings; empty from every other call.
    face_ids: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ModelFingerprint:
    """The recognizer that makes a gallery's embeddings: its network name and the sha256 of its ONNX file,
    as the served model's config names them (`fr_name`, `fr_sha256`; GET /models). Two fingerprints are
    the same model when their sha256 agree (the file is what makes the numbers; a name is a label)."""

    network: str
    sha256: str

    def same_model(self, other: ModelFingerprint | None) -> bool:
        return other is not None and other.sha256 == self.sha256

    def describe(self) -> str:
        return f"{self.network or 'an unnamed network'} (sha256 {self.sha256[:16]}...)"


@dataclass(frozen=True)
class Sample:
    """What is stored with one face sample besides its embedding: how it was measured at enrollment.

    Every field may be None (a bulk load, or a sample stored before these were kept). `crop` is
    the encoded aligned crop the recognizer embedded (`GALLERY_KEEP_CROPS`), what a re-embedding
    with another model starts from; `model_sha256` the recognizer that made the embedding (None:
    the model the gallery has recorded).
    """

    face_size: float | None = None  # pixels (vision.quality)
    sharpness: float | None = None
    detection_score: float | None = None
    yaw: float | None = None  # degrees (vision.head_pose)
    pitch: float | None = None
    roll: float | None = None
    source: str | None = None  # the uploaded file's name
    crop: bytes | None = None
    model_sha256: str | None = None


@dataclass(frozen=True)
class StoredFace:
    """One stored face sample as GET /identities/{id}/faces lists it (measurements None when not kept)."""

    id: int
    identity_id: str
    created_at: str
    face_size: float | None
    sharpness: float | None
    detection_score: float | None
    yaw: float | None
    pitch: float | None
    roll: float | None
    source: str | None
    has_crop: bool
    model_sha256: str | None


@dataclass(frozen=True)
class ModelStatus:
    """How far a gallery is from being all embedded by one model."""

    total: int  # samples stored
    pending: int  # samples not embedded by the model
    pending_without_crop: int  # of those, samples with no stored crop to re-embed from
    people_without_crop: int  # identities with such a sample


@dataclass(frozen=True)
class PendingCrop:
    face_id: int
    identity_id: str
    crop: bytes


@dataclass(frozen=True)
class Match:
    id: str
    name: str
    similarity: float


# (name, metadata, embeddings) or (name, metadata, embeddings, samples): one person of a bulk load.
Person = tuple[str, dict, np.ndarray] | tuple[str, dict, np.ndarray, Sequence[Sample] | None]


class Gallery(Protocol):
    # `samples`: one per embedding (same order), or None (nothing measured); the answer's
    # `face_ids` are the new samples' ids in that order.
    def create(
        self, name: str, metadata: dict, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity: ...
    def add_faces(
        self, identity_id: str, embeddings: np.ndarray, samples: Sequence[Sample] | None = None
    ) -> Identity: ...
    def faces(self, identity_id: str) -> list[StoredFace]:
        """The identity's samples, oldest first (IdentityNotFound)."""
    def delete_face(self, identity_id: str, face_id: int) -> Identity:
        """Remove one sample (FaceNotFound unless it is this identity's; LastFace for the only one)."""
    def get(self, identity_id: str) -> Identity: ...
    def list(self, limit: int, offset: int) -> tuple[int, list[Identity]]: ...
    def update(self, identity_id: str, name: str | None, metadata: dict | None) -> Identity: ...
    def merge(self, target_id: str, source_id: str) -> Identity: ...
    def delete(self, identity_id: str) -> None: ...
    def delete_all(self) -> int: ...
    def search(self, queries: np.ndarray, top_k: int) -> list[list[Match]]: ...
    def score_identity(self, identity_id: str, queries: np.ndarray) -> list[Match]:
        """Each query (Q, 512) scored against one person as `search` scores people (the gallery's scoring:
        centroid or best sample), whether or not they would be among its top_k: one Match per query
        (IdentityNotFound). What 1:1 verification against an enrolled person compares."""
    def create_many(self, people: Sequence[Person]) -> list[Identity]:
        """Several people in one transaction (bulk loads): (name, metadata, embeddings[, samples]) each."""
    def prepare(self) -> None:
        """Build or load the search index now (at start-up) rather than at the first search."""
    def face_count(self) -> int: ...
    def index_status(self) -> dict:
        """{"index", "library", "generation", "building", "loaded_from_file"} of the search index."""
    def close(self) -> None: ...

    # ---- which recognizer made the embeddings (usecases.gallery_model, usecases.reembed)
    def model(self) -> ModelFingerprint | None:
        """The recorded fingerprint, or None (a gallery from before fingerprints were kept)."""
    def claim_model(self, served: ModelFingerprint) -> tuple[ModelFingerprint, int | None]:
        """Record `served` when no fingerprint is recorded (stamping every unstamped sample with it), in
        one transaction; (the recorded fingerprint, the samples stamped now, or None when one was
        recorded already)."""
    def model_status(self, sha256: str) -> ModelStatus: ...
    def pending_crops(self, sha256: str, after_id: int, limit: int) -> list[PendingCrop]:
        """Up to `limit` samples with id > `after_id` not embedded by `sha256` that have a crop, by id."""
    def replace_embeddings(self, updates: Sequence[tuple[int, np.ndarray]], sha256: str) -> int:
        """New embeddings of samples (face id, (512,) vector), marked as made by `sha256`, in one
        transaction; the number of samples updated (a sample deleted meanwhile is skipped)."""
    def finish_model_change(self, target: ModelFingerprint) -> None:
        """Record `target` once every sample is embedded by it (ModelChangeIncomplete otherwise)."""


def now() -> str:
    # Microseconds: identities are listed by creation time, and two enrolled in the same
    # millisecond would otherwise come back in the random order of their ids.
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    return uuid.uuid4().hex


def as_vectors(embeddings: np.ndarray) -> np.ndarray:
    """(N, 512) float32, rows unit length: what is stored and searched."""
    vectors = np.asarray(embeddings, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)

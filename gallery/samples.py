"""The per-sample columns both gallery backends store beside each embedding, and their rows.

A sample's measurements at enrollment (`gallery.store.Sample`: size, sharpness, detection
score, head pose, the uploaded file's name) live in the `faces` table; its aligned crop in
`face_crops` (one row per sample that has one, deleted with it), so that reading every
embedding never reads the crops; the recognizer that made its embedding in `faces.model_sha256`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gallery.store import Sample, StoredFace

MAX_SOURCE_CHARS = 255  # an uploaded file's name is kept to this length
# The measurement columns of `faces`, in the order of `sample_values`.
SAMPLE_COLUMNS = ("face_size", "sharpness", "detection_score", "yaw", "pitch", "roll", "source")
# What `stored_face` reads: faces f, with EXISTS on face_crops for has_crop (callers add FROM / WHERE).
STORED_FACE_SQL = (
    "SELECT f.id, f.identity_id, f.created_at, "
    + ", ".join(f"f.{column}" for column in SAMPLE_COLUMNS)
    + ", EXISTS (SELECT 1 FROM face_crops c WHERE c.face_id = f.id), f.model_sha256"
)


def samples_for(count: int, samples: Sequence[Sample] | None) -> list[Sample]:
    """One Sample per embedding: `samples` checked against `count`, or empty ones."""
    if samples is None:
        return [Sample()] * count
    if len(samples) != count:
        raise ValueError(f"{len(samples)} samples for {count} embeddings")
    return list(samples)


def _number(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def sample_values(sample: Sample) -> tuple:
    """The SAMPLE_COLUMNS values of one sample."""
    source = None if sample.source is None else sample.source[:MAX_SOURCE_CHARS]
    numbers = (sample.face_size, sample.sharpness, sample.detection_score, sample.yaw, sample.pitch, sample.roll)
    return (*(_number(value) for value in numbers), source)


def stored_face(row: Sequence) -> StoredFace:
    """A row of STORED_FACE_SQL -> StoredFace."""
    face_id, identity_id, created_at, size, sharp, score, yaw, pitch, roll, source, has_crop, model = row
    return StoredFace(int(face_id), identity_id, created_at, size, sharp, score, yaw, pitch, roll, source,
                      bool(has_crop), model)

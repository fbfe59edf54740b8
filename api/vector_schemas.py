"""Request and response shapes of the embedding-level routes: a client's vectors, the model that made them.

`POST /identify/embedding` takes a JSON body (`EmbeddingSearch`); enrollment from embeddings
(`POST /identities`) takes them as its `embeddings` form field, JSON text, or the list itself
in a JSON body (`EMBEDDINGS_JSON_TEXT`). The bounds stated here document the vectors; the use
cases check them (`usecases.vectors`), whichever way they came.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from api.bodies import JSON_TEXT
from gallery.store import EMBEDDING_DIM

# The served w600k_mbf's sha256 (GET /models) and a unit vector: examples that work against the default pack.
EXAMPLE_SHA256 = "0f0127d1fbcf18e12ec59b24ae2bd1f86990072171a2e579e3a2b398f007b9da"
EXAMPLE_VECTOR = [0.0442] * EMBEDDING_DIM
MODEL_SHA256_DESCRIPTION = (
    "sha256 of the recognizer that made the embeddings (the `model.sha256` of /embedding's answer, GET /models): "
    "409 when it is not the served one's, since embeddings of two models cannot be compared; unchecked when absent"
)
VECTOR_SCHEMA = {
    "type": "array", "items": {"type": "number"}, "minItems": EMBEDDING_DIM, "maxItems": EMBEDDING_DIM,
}
# A form field holding a list of vectors as JSON text; a JSON body may carry the list itself (api/bodies.py).
EMBEDDINGS_JSON_TEXT = {**JSON_TEXT, "contentSchema": {"type": "array", "items": VECTOR_SCHEMA, "minItems": 1}}

# One vector: exactly EMBEDDING_DIM finite numbers (pydantic refuses NaN and infinities; zero is the use case's).
Vector = Annotated[
    list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
    Field(min_length=EMBEDDING_DIM, max_length=EMBEDDING_DIM),
]


class EmbeddingSearch(BaseModel):
    embeddings: list[Vector] = Field(
        min_length=1,
        description=f"one or more embeddings of {EMBEDDING_DIM} finite numbers (at most MAX_BATCH_IMAGES), made by "
        "the served recognizer (POST /embedding(s)); L2-normalised here, a zero vector is refused",
    )
    top_k: int = Field(default=5, ge=1, le=100, description="nearest people listed per embedding")
    threshold: float | None = Field(default=None, ge=-1, le=1, description="IDENTIFY_THRESHOLD unless given")
    model_sha256: str | None = Field(default=None, max_length=128, description=MODEL_SHA256_DESCRIPTION)

    model_config = {
        "json_schema_extra": {
            "examples": [{"embeddings": [EXAMPLE_VECTOR], "top_k": 3, "model_sha256": EXAMPLE_SHA256}]
        }
    }

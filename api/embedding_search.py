"""HTTP route: name a client's embeddings from the gallery (`POST /identify/embedding`).

For clients that compute or cache embeddings (from /embedding, /embeddings): each vector is
named as /identify names a face (`usecases.identification`: the same search and threshold),
so a face and its embedding sent back get the same people and similarities. Needs the key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.bodies import JsonOrFormRoute
from api.dependencies import IdentificationDep, KeyRequired
from api.gallery import KEY_ERRORS, MatchOut, error_responses, match_out
from api.schemas import Error, RecognizerModel, Unprocessable, recognizer_json
from api.vector_schemas import EXAMPLE_SHA256, EmbeddingSearch

router = APIRouter(tags=["gallery"], dependencies=[KeyRequired], responses=KEY_ERRORS, route_class=JsonOrFormRoute)


class NamedEmbedding(BaseModel):
    identity: MatchOut | None = Field(description="the best match, or null (unknown) below the threshold")
    matches: list[MatchOut] = Field(description="the top_k nearest people, best first")


class EmbeddingSearchResponse(BaseModel):
    threshold: float = Field(examples=[0.4])
    results: list[NamedEmbedding] = Field(description="one per embedding sent, in its order")
    model: RecognizerModel | None = Field(description="the served recognizer the embeddings were compared as")

    model_config = {
        "json_schema_extra": {
            "examples": [{
                "threshold": 0.4,
                "results": [{
                    "identity": {"id": "5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b", "name": "Ada Lovelace", "similarity": 0.71},
                    "matches": [{"id": "5f0c3d9a8b6e4c1f9d2a7b3c4e5f6a7b", "name": "Ada Lovelace", "similarity": 0.71},
                                {"id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "name": "Bob", "similarity": 0.12}],
                }],
                "model": {"name": "w600k_mbf", "sha256": EXAMPLE_SHA256},
            }]
        }
    }


SEARCH_ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 503),  # 400: a body that cannot be read as text (not UTF-8)
    409: {"model": Error, "description": "model_sha256 is not the served recognizer's: the vectors are another "
          "model's and cannot be compared (the detail names both)"},
    413: {"model": Error, "description": "more than MAX_BATCH_IMAGES embeddings, or a body above the limit"},
    422: {"model": Unprocessable, "description": "a vector that is not 512 finite numbers, or is zero; a body "
          "that is not the JSON object described"},
}


@router.post("/identify/embedding", response_model=EmbeddingSearchResponse, responses=SEARCH_ERRORS,
             summary="Name embeddings from the gallery, as /identify names faces")
async def identify_embedding(identification: IdentificationDep, search: EmbeddingSearch) -> EmbeddingSearchResponse:
    found = await identification.identify_embeddings(search.embeddings, search.top_k, search.threshold,
                                                     search.model_sha256)
    return EmbeddingSearchResponse(
        threshold=found.threshold,
        results=[NamedEmbedding(identity=match_out(best) if best else None, matches=[match_out(m) for m in matches])
                 for best, matches in found.named],
        model=recognizer_json(found.model),
    )

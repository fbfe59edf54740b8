"""Use cases about the service itself: are the models ready, and what exactly is served."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from errors import InferenceUnavailable
from triton_service import ANTISPOOF, DETECTOR, RECOGNIZER

CORE_MODELS = (DETECTOR, RECOGNIZER)  # what /ready needs; optional models do not gate it
OPTIONAL_MODELS = (ANTISPOOF,)


class ModelServer(Protocol):
    async def readiness(self, models: Sequence[str]) -> str | None: ...
    async def serves(self, model: str) -> bool: ...
    async def config(self, model: str) -> dict: ...


class ServiceStatus:
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    async def ready_models(self) -> list[str]:
        """The core models when all are ready; raises InferenceUnavailable with the reason otherwise."""
        reason = await self.server.readiness(list(CORE_MODELS))
        if reason is not None:
            raise InferenceUnavailable(reason)
        return list(CORE_MODELS)

    async def model_configs(self) -> list[dict]:
        """Triton's config (JSON) of every served model: detector, recognizer, then anti-spoofing when there."""
        served = await asyncio.gather(*(self.server.serves(model) for model in OPTIONAL_MODELS))
        models = [*CORE_MODELS, *(m for m, there in zip(OPTIONAL_MODELS, served, strict=True) if there)]
        return list(await asyncio.gather(*(self.server.config(model) for model in models)))

"""What the use cases on the gallery share: their collaborators, and the checks made before any work."""

from __future__ import annotations

from gallery.store import Gallery
from pipeline import FacePipeline
from settings import Settings
from usecases.gallery_model import GalleryModel
from usecases.liveness import LivenessCheck
from vision.quality import QualityLimits


class GalleryUseCase:
    """Identification, verification and enrollment: the pipeline, the gallery, the liveness check,
    the settings and (optional) the check that the served recognizer is the one that made the gallery."""

    def __init__(
        self, pipeline: FacePipeline, gallery: Gallery, liveness: LivenessCheck, settings: Settings,
        model: GalleryModel | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.liveness = liveness
        self.settings = settings
        self.limits = QualityLimits.from_settings(settings)
        self.model = model

    async def check_ready(self, liveness: bool) -> None:
        """Before any inference: GalleryModelMismatch (503) rather than scores against another model's
        gallery, and LivenessUnavailable (503) when `liveness` is asked for but not installed."""
        if self.model is not None:
            await self.model.ensure()
        if liveness:
            await self.pipeline.require_liveness()

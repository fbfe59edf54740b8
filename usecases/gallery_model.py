"""Use case: the gallery knows its model. Embeddings of two recognizers cannot be compared, so the
gallery records the one that made its samples (network name and sha256 of its ONNX file, as GET
/models shows them) and is only used with that one served.

At start-up (`check_at_start`, from the app's lifespan): a gallery without a fingerprint (new, or
made before fingerprints were kept) records the served recognizer's, and the log says so; one
recorded under another recognizer stops the start with both models named and what to do,
unless GALLERY_ALLOW_MODEL_CHANGE=reembed, which re-embeds every sample from its stored crop
first (`usecases.reembed`). When Triton cannot be asked at start (not up yet), the check runs
at the first request that needs embeddings (`ensure`), and a mismatch found then answers 503
to those requests: re-embedding only ever runs at start-up or from the command line.
"""

from __future__ import annotations

import asyncio
import logging
import time

from errors import GalleryModelMismatch, InferenceUnavailable, ModelMismatch
from gallery.store import Gallery, ModelFingerprint, ModelStatus
from pipeline import FacePipeline
from settings import Settings
from usecases.reembed import ReEmbedding, served_fingerprint, uncropped_problem

log = logging.getLogger("frtriton")
START_CHECK_TIMEOUT_S = 5.0  # at most this long for Triton's answer at start-up; later, at the first request
PROGRESS_LOG_INTERVAL_S = 10.0  # a start-up re-embedding logs its progress this often


def mismatch_message(recorded: ModelFingerprint, served: ModelFingerprint, status: ModelStatus) -> str:
    """Which model made the gallery, which one is served, and what to do."""
    if recorded.same_model(served):  # a re-embedding towards another model was stopped halfway
        made = (f"{status.pending} of its {status.total} face samples were re-embedded by another recognizer (an "
                f"unfinished re-embedding), while the gallery and Triton are on {served.describe()}")
    else:
        made = (f"the gallery's face samples were embedded by {recorded.describe()}, but Triton serves "
                f"{served.describe()}")
    advice = (
        "serve the gallery's model again, or move the gallery to the served model: restart with "
        "GALLERY_ALLOW_MODEL_CHANGE=reembed (re-embeds every sample from its stored crop at start-up), or run "
        "`python -m usecases.reembed --triton-url HOST:PORT` with the API stopped"
    )
    if status.pending_without_crop:
        advice += f"; but {uncropped_problem(status)}"
    return f"{made}: embeddings of different models cannot be compared. To go on, {advice}"


def check_client_model(served: ModelFingerprint | None, sha256: str | None) -> None:
    """Raises ModelMismatch when a client's `sha256` (None: not given) is not the served recognizer's."""
    if sha256 is None:
        return
    given = sha256.strip().lower()
    if served is None:
        raise ModelMismatch(
            f"the embeddings name the recognizer with sha256 {given[:16]}..., but the served recognizer's config "
            "names no sha256 (fr_sha256), so they cannot be checked: send them without model_sha256, or images"
        )
    if given != served.sha256:
        raise ModelMismatch(
            f"the embeddings were made by the recognizer with sha256 {given[:16]}..., but Triton serves "
            f"{served.describe()} (GET /models): embeddings of different models cannot be compared. Embed the "
            "photos again with this service (POST /embedding, POST /embeddings) or send the photos; nothing was "
            "searched or stored"
        )


class GalleryModel:
    """Checks, once, that the served recognizer is the one that made the gallery."""

    def __init__(self, pipeline: FacePipeline, gallery: Gallery, settings: Settings) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.settings = settings
        self.served: ModelFingerprint | None = None
        self._checked = False
        self._lock = asyncio.Lock()

    async def check_at_start(self) -> None:
        """Raises GalleryModelMismatch (the start fails) unless the gallery fits the served recognizer or was
        re-embedded for it; a Triton that does not answer now leaves the check to the first request."""
        try:
            async with asyncio.timeout(START_CHECK_TIMEOUT_S):
                served = await served_fingerprint(self.pipeline)
        except (InferenceUnavailable, TimeoutError) as error:
            reason = getattr(error, "message", None) or f"no answer within {START_CHECK_TIMEOUT_S:g} s"
            log.warning("gallery model: cannot read the served recognizer now (%s); the gallery's model is checked "
                        "at the first enrollment or identification", reason)
            return
        async with self._lock:
            await self._check(served, may_reembed=self.settings.gallery_allow_model_change == "reembed")

    async def ensure(self) -> ModelFingerprint | None:
        """The served (and checked) fingerprint, checking it first if start-up could not; None when the
        served recognizer carries none. Raises GalleryModelMismatch (503) on a mismatch."""
        if not self._checked:
            async with self._lock:
                if not self._checked:
                    await self._check(await served_fingerprint(self.pipeline), may_reembed=False)
        return self.served

    async def require(self, sha256: str | None) -> ModelFingerprint | None:
        """As `ensure`, and when a client names the recognizer that made its embeddings (`model_sha256`),
        that it is the served one: ModelMismatch (409) otherwise."""
        served = await self.ensure()
        check_client_model(served, sha256)
        return served

    async def _check(self, served: ModelFingerprint | None, may_reembed: bool) -> None:
        if served is None:
            log.warning("gallery model: the served recognizer's config names no sha256 (fr_sha256), so the model "
                        "that made the gallery cannot be checked")
            self._checked = True
            return
        recorded, stamped = await asyncio.to_thread(self.gallery.claim_model, served)
        if stamped is not None:
            log.info("gallery model: the gallery had no model fingerprint; recorded the served recognizer %s as the "
                     "model of its %d face samples", served.describe(), stamped)
        status = await asyncio.to_thread(self.gallery.model_status, served.sha256)
        if status.total == 0 and not recorded.same_model(served):  # nothing to compare: the served one it is
            await asyncio.to_thread(self.gallery.finish_model_change, served)
            log.info("gallery model: the gallery holds no face samples; recorded the served recognizer %s instead "
                     "of %s", served.describe(), recorded.describe())
        elif not (recorded.same_model(served) and status.pending == 0):
            if not may_reembed or status.pending_without_crop:
                message = mismatch_message(recorded, served, status)
                log.error("gallery model: %s", message)
                raise GalleryModelMismatch(message)
            await self._reembed(recorded, served, status)
        self.served = served
        self._checked = True

    async def _reembed(self, recorded: ModelFingerprint, served: ModelFingerprint, status: ModelStatus) -> None:
        log.warning("gallery model: GALLERY_ALLOW_MODEL_CHANGE=reembed: re-embedding %d of %d face samples from "
                    "their stored crops, %s -> %s", status.pending, status.total, recorded.describe(),
                    served.describe())
        done, last = 0, time.monotonic()

        def progress(count: int) -> None:
            nonlocal done, last
            done += count
            if time.monotonic() - last >= PROGRESS_LOG_INTERVAL_S:
                last = time.monotonic()
                log.info("gallery model: re-embedded %d of %d face samples", done, status.pending)

        stored = await ReEmbedding(self.pipeline, self.gallery).run(served, progress)
        log.info("gallery model: re-embedded %d face samples; the gallery's model is now %s", stored, served.describe())

"""Move a gallery to another recognizer: re-embed every sample from its stored crop, then record the model.

    python -m usecases.reembed [--triton-url HOST:PORT] [--db data/gallery.db | --gallery-url postgresql://...]

The served recognizer (through the project's own `triton_service` client and `pipeline`, as the
API calls it) embeds each sample's aligned crop again (`GALLERY_KEEP_CROPS` stored it at
enrollment); every batch is committed with its samples marked as made by the new model
(SQLite: through the gallery's own write path, so the search index catches up), and only when
no sample of another model is left does the gallery record the new fingerprint. So a run
stopped anyhow (Ctrl-C, a crash, Triton gone) loses nothing committed and the next run goes on
with the samples not yet done. Run it while the API is stopped (an API started with
`GALLERY_ALLOW_MODEL_CHANGE=reembed` does the same at start-up); it refuses, before changing
anything, a gallery with samples that have no stored crop.

This module sits in `usecases/` (not `gallery/`): it needs the pipeline, which the gallery layer
must not import (`tests/test_architecture.py`).
Exit status: 0 done (or nothing to do), 1 refused or failed (one line on stderr), 2 wrong usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from errors import FaceServiceError, GalleryModelMismatch, InvalidImage
from gallery.factory import open_gallery
from gallery.store import Gallery, ModelChangeIncomplete, ModelFingerprint, ModelStatus
from imaging.crops import decode_crop
from pipeline import FacePipeline
from settings import Settings
from triton_service import TritonClient, http_address

BATCH = 64  # crops per recognizer request (Triton splits it into its max_batch_size) and per commit


async def served_fingerprint(pipeline: FacePipeline) -> ModelFingerprint | None:
    """The served recognizer's fingerprint (GET /models' network and sha256), None without a checksum."""
    named = await pipeline.recognizer()
    return ModelFingerprint(*named) if named else None


def uncropped_problem(status: ModelStatus) -> str:
    people = status.people_without_crop
    return (
        f"{status.pending_without_crop} of the gallery's {status.total} face samples ({people} "
        f"{'person' if people == 1 else 'people'}) have no stored crop (enrolled before crops were kept, or "
        "with GALLERY_KEEP_CROPS=false) and cannot be re-embedded: serve the gallery's model again, or enroll "
        "those people again from their photos (python -m gallery.bulk_import) into a new gallery; nothing was changed"
    )


class ReEmbedding:
    """Re-embeds a gallery's samples with the served recognizer, from their stored crops, batch by batch."""

    def __init__(self, pipeline: FacePipeline, gallery: Gallery, batch: int = BATCH) -> None:
        self.pipeline = pipeline
        self.gallery = gallery
        self.batch = batch

    async def run(self, target: ModelFingerprint, progress: Callable[[int], None] = lambda done: None) -> int:
        """Re-embed every sample not made by `target`, then record `target`; the samples re-embedded.

        `progress(n)` after each committed batch of n. Raises GalleryModelMismatch, before any change,
        when a sample to re-embed has no crop; a crop that cannot be decoded stops the run there.
        """
        status = await asyncio.to_thread(self.gallery.model_status, target.sha256)
        if status.pending_without_crop:
            raise GalleryModelMismatch(uncropped_problem(status))
        size = await self.pipeline.crop_size()
        after, done = 0, 0
        while pending := await asyncio.to_thread(self.gallery.pending_crops, target.sha256, after, self.batch):
            crops = await asyncio.to_thread(self._decode, pending, size)
            vectors = await self.pipeline.embed(crops)
            updates = [(item.face_id, vector) for item, vector in zip(pending, vectors, strict=True)]
            done += await asyncio.to_thread(self.gallery.replace_embeddings, updates, target.sha256)
            after = pending[-1].face_id
            progress(len(pending))
        try:
            await asyncio.to_thread(self.gallery.finish_model_change, target)
        except ModelChangeIncomplete as error:  # samples stored meanwhile without a crop
            raise GalleryModelMismatch(error.message) from error
        return done

    @staticmethod
    def _decode(pending: Sequence, size: int) -> np.ndarray:
        crops = []
        for item in pending:
            try:
                crops.append(decode_crop(item.crop, size))
            except InvalidImage as error:
                raise GalleryModelMismatch(
                    f"the stored crop of face {item.face_id} (identity {item.identity_id}) cannot be decoded: delete "
                    f"that face (DELETE /identities/{item.identity_id}/faces/{item.face_id}) and run again"
                ) from error
        return np.stack(crops)


# --------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m usecases.reembed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-url", help="host:port of Triton's HTTP endpoint (default: TRITON_URL, else "
                        "127.0.0.1:TRITON_HTTP_PORT)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="the SQLite gallery (default: GALLERY_DB)")
    where.add_argument("--gallery-url", help="the PostgreSQL gallery (default: GALLERY_URL)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"crops per request and commit (default {BATCH})")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    return args


async def reembed_gallery(gallery: Gallery, pipeline: FacePipeline, batch: int, say: Callable[[str], None]) -> None:
    """The CLI's work: check where the gallery stands, then re-embed it with a progress bar."""
    from tqdm import tqdm

    served = await served_fingerprint(pipeline)
    if served is None:
        raise GalleryModelMismatch("the served recognizer's config names no sha256 (fr_sha256): install the model "
                                   "with extract_insightface_models.py so that it carries its fingerprint")
    recorded, stamped = await asyncio.to_thread(gallery.claim_model, served)
    if stamped is not None:
        say(f"the gallery had no model fingerprint: recorded {served.describe()} as the model of its {stamped} "
            "face samples; nothing to re-embed")
        return
    status = await asyncio.to_thread(gallery.model_status, served.sha256)
    if recorded.same_model(served) and status.pending == 0:
        say(f"every one of the {status.total} face samples is embedded by {served.describe()}: nothing to do")
        return
    if status.pending_without_crop:
        raise GalleryModelMismatch(uncropped_problem(status))
    say(f"re-embedding {status.pending} of {status.total} face samples: {recorded.describe()} -> {served.describe()}")
    bar = tqdm(total=status.total, initial=status.total - status.pending, unit="face", desc="re-embed",
               dynamic_ncols=True, disable=None)
    try:
        done = await ReEmbedding(pipeline, gallery, batch).run(served, bar.update)
    finally:
        bar.close()
    say(f"done: {done} face samples re-embedded; the gallery's model is now {served.describe()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    url = args.gallery_url or (None if args.db else settings.gallery_url)
    address = http_address(args.triton_url or settings.triton_url, settings.triton_http_port)

    def say(line: str) -> None:
        print(line, flush=True)

    async def work() -> None:
        client = TritonClient(address, settings.triton_timeout_s)
        await client.open()
        try:
            await reembed_gallery(gallery, FacePipeline(client, settings), args.batch, say)
        finally:
            await client.close()

    db = args.db or settings.gallery_db
    if url is None and not db.is_file():  # never create an empty gallery by mistake
        print(f"reembed: there is no gallery at {db} (GALLERY_DB, or --db)", file=sys.stderr)
        return 1
    try:
        gallery = open_gallery(db, url, settings.gallery_scoring, "exact")
    except Exception as error:  # psycopg.OperationalError, sqlite3.Error, OSError: one line, not a traceback
        print(f"reembed: cannot open the gallery: {error}", file=sys.stderr)
        return 1
    try:
        asyncio.run(work())
    except KeyboardInterrupt:
        print("reembed: interrupted; every batch committed so far is kept: run again to continue", file=sys.stderr)
        return 130
    except FaceServiceError as error:
        print(f"reembed: {error.message}", file=sys.stderr)
        return 1
    finally:
        gallery.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

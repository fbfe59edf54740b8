"""Use case: video jobs in the API process's background: a bounded worker pool and queue, TTL, cancellation.

`submit` checks there is room (else VideoJobsBusy with a Retry-After), streams the upload into a
file of its own with the byte limit enforced as it arrives, probes it (a file that is not a video
is refused there, never queued) and queues the job. `MAX_VIDEO_JOBS` workers take jobs in order;
a job's result is kept for `VIDEO_RESULT_TTL_S` after it ends, then forgotten with its files.
`delete` cancels a queued or running job (its worker is free as soon as the current batch ends)
or removes a finished one. Nothing survives a restart: jobs live in this process's memory and
their files are removed when it starts and when it stops; an old id is simply unknown (404).

One event loop runs every call, so the job table needs no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from errors import FaceServiceError, VideoJobNotFound, VideoJobsBusy, VideoTooLarge
from imaging.decode import Upload
from settings import Settings
from usecases.video_analysis import VideoOptions, VideoResult
from video.decode import VideoInfo, probe

log = logging.getLogger("frtriton")

CHUNK_BYTES = 1024 * 1024
UPLOAD_SUFFIX = ".upload"
ANNOTATED_SUFFIX = ".annotated.mp4"
RETRY_AFTER_UNKNOWN_S = 5  # no running job has made progress yet
RETRY_AFTER_MAX_S = 300
SWEEP_MAX_S = 60.0  # finished jobs are looked at for expiry at least this often


class Status(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Analyser(Protocol):
    """What runs one job (`usecases.video_analysis.VideoAnalysis`)."""

    async def check(self, options: VideoOptions) -> None: ...

    async def analyse(
        self,
        path: Path,
        info: VideoInfo,
        options: VideoOptions,
        progress: Callable[[int], None],
        annotated: Path | None = None,
    ) -> VideoResult: ...


@dataclass
class VideoJob:
    id: str
    info: VideoInfo
    options: VideoOptions
    upload: Path
    annotated: Path | None  # where the annotated copy goes, with annotate=true
    created_at: str
    status: Status = Status.QUEUED
    frames_read: int = 0
    started: float | None = None  # clock() when a worker took it
    ended: float | None = None  # clock() when it ended
    result: VideoResult | None = None
    error: FaceServiceError | None = None  # why it failed (the message is the client's)
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def progress(self) -> float | None:
        """Frames read / the container's frame count, in [0, 1] (1 when done; None when the count is unknown)."""
        if self.status is Status.DONE:
            return 1.0
        if not self.info.frame_count:
            return None
        return round(min(1.0, self.frames_read / self.info.frame_count), 4)


class VideoJobs:
    """The job table, queue and workers. `start()` in the app's lifespan, `close()` at its end."""

    def __init__(self, analyser: Analyser, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.analyser = analyser
        self.settings = settings
        self.clock = clock
        self.jobs: dict[str, VideoJob] = {}
        self.queue: asyncio.Queue[VideoJob] = asyncio.Queue()
        self.receiving = 0  # uploads being received: they hold a place too
        self.folder = settings.video_dir
        self._own_folder = False
        self._tasks: list[asyncio.Task] = []

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="frtriton-video-"))
            self._own_folder = True
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()  # files of jobs a previous process never finished
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.settings.max_video_jobs)]
        self._tasks.append(asyncio.create_task(self._sweeper()))

    async def close(self) -> None:
        running = [job.task for job in self.jobs.values() if job.task is not None and not job.task.done()]
        for task in [*self._tasks, *running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        for job in list(self.jobs.values()):
            self._forget(job)
        if self._own_folder and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        for pattern in (f"*{UPLOAD_SUFFIX}", f"*{ANNOTATED_SUFFIX}", f"*{UPLOAD_SUFFIX}.part"):
            for path in self.folder.glob(pattern):
                path.unlink(missing_ok=True)

    # ----------------------------------------------------------------- the routes' calls
    @property
    def capacity(self) -> int:
        return self.settings.max_video_jobs + self.settings.video_queue

    def unfinished(self) -> int:
        return sum(job.status in (Status.QUEUED, Status.RUNNING) for job in self.jobs.values())

    def ensure_room(self) -> None:
        """Raises VideoJobsBusy (with a Retry-After) when every worker and queue place is taken."""
        taken = self.unfinished() + self.receiving
        if taken >= self.capacity:
            retry = self.retry_after_s()
            raise VideoJobsBusy(
                f"the video workers are busy ({taken} jobs running or waiting, MAX_VIDEO_JOBS + VIDEO_QUEUE = "
                f"{self.capacity}); retry after {retry} s",
                retry,
            )

    async def submit(self, upload: Upload, options: VideoOptions) -> VideoJob:
        """Receive, probe and queue one video.

        Raises VideoJobsBusy, VideoTooLarge, InvalidVideo, LivenessUnavailable.
        """
        self.ensure_room()
        self.receiving += 1
        job_id = uuid.uuid4().hex
        path = self.folder / f"{job_id}{UPLOAD_SUFFIX}"
        try:
            await self._receive(upload, path)
            settings = self.settings
            info = await asyncio.to_thread(
                probe, path, max_pixels=settings.max_image_pixels, max_seconds=settings.max_video_seconds
            )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            self.receiving -= 1
        try:  # after the video is known good, as the image routes check the photo first
            await self.analyser.check(options)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        annotated = self.folder / f"{job_id}{ANNOTATED_SUFFIX}" if options.annotate else None
        job = VideoJob(job_id, info, options, path, annotated, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        self.jobs[job_id] = job
        self.queue.put_nowait(job)
        return job

    async def _receive(self, upload: Upload, path: Path) -> None:
        """Copy the upload to `path` chunk by chunk, refusing it (VideoTooLarge) once past MAX_VIDEO_BYTES."""
        limit = self.settings.max_video_bytes
        received = 0
        with open(path, "wb") as out:
            while chunk := await upload.read(CHUNK_BYTES):
                received += len(chunk)
                if received > limit:
                    name = upload.filename or "the video"
                    raise VideoTooLarge(f"{name} is larger than {limit} bytes (MAX_VIDEO_BYTES)")
                await asyncio.to_thread(out.write, chunk)

    def get(self, job_id: str) -> VideoJob:
        """The job (VideoJobNotFound when unknown, removed or expired)."""
        self.expire()
        job = self.jobs.get(job_id)
        if job is None:
            raise VideoJobNotFound(
                f"no video job with id {job_id!r}: it was removed, its result expired (VIDEO_RESULT_TTL_S), "
                "or it was made before the service restarted (jobs do not survive a restart)"
            )
        return job

    def delete(self, job_id: str) -> Status:
        """Cancel a queued or running job, or remove a finished one; the status it had."""
        job = self.get(job_id)
        was = job.status
        if job.task is not None and not job.task.done():
            job.task.cancel()  # the worker is free once the task has stopped, at the end of its batch
        self._forget(job)
        return was

    def retry_after_s(self) -> int:
        """Seconds until a worker is likely free: the least time left of the running jobs, by their progress."""
        now = self.clock()
        left = []
        for job in self.jobs.values():
            if job.status is Status.RUNNING and job.started is not None and job.progress:
                elapsed = now - job.started
                left.append(elapsed * (1 - job.progress) / job.progress)
        if not left:
            return RETRY_AFTER_UNKNOWN_S
        return min(RETRY_AFTER_MAX_S, max(1, math.ceil(min(left))))

    def expire(self) -> None:
        """Forget the jobs that ended more than VIDEO_RESULT_TTL_S ago (and their files)."""
        cutoff = self.clock() - self.settings.video_result_ttl_s
        for job in [j for j in self.jobs.values() if j.ended is not None and j.ended < cutoff]:
            self._forget(job)

    # ----------------------------------------------------------------- the workers
    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            if self.jobs.get(job.id) is not job:
                continue  # deleted while it waited
            job.status, job.started = Status.RUNNING, self.clock()
            job.task = asyncio.create_task(self._run(job))
            await asyncio.wait([job.task])  # a cancelled job ends its task, not this worker

    async def _run(self, job: VideoJob) -> None:
        def progress(frames_read: int) -> None:
            job.frames_read = frames_read

        try:
            job.result = await self.analyser.analyse(job.upload, job.info, job.options, progress, job.annotated)
            job.status = Status.DONE
        except asyncio.CancelledError:
            raise
        except FaceServiceError as error:  # Triton down, a damaged file: the client's message
            job.error, job.status = error, Status.FAILED
        except Exception:
            log.exception("video job %s failed", job.id)
            job.error, job.status = FaceServiceError("internal error while analysing the video"), Status.FAILED
        finally:
            job.ended = self.clock()
            job.upload.unlink(missing_ok=True)  # the source is not needed once the job ends
            if job.status is not Status.DONE and job.annotated is not None:
                job.annotated.unlink(missing_ok=True)

    async def _sweeper(self) -> None:
        interval = min(SWEEP_MAX_S, self.settings.video_result_ttl_s / 2)
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def _forget(self, job: VideoJob) -> None:
        self.jobs.pop(job.id, None)
        if job.task is None or job.task.done():  # a running task removes its upload itself when it stops
            job.upload.unlink(missing_ok=True)
        if job.annotated is not None:
            with contextlib.suppress(OSError):
                job.annotated.unlink(missing_ok=True)

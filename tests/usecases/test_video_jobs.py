"""usecases.video_jobs: the queue, the worker pool, cancellation, expiry and files, with a stand-in analysis.

The stand-in is the only fake: the upload is a real clip probed with OpenCV; each job's analysis
waits for the test to release it (asyncio events), so every step is deterministic.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from errors import InvalidVideo, VideoJobNotFound, VideoJobsBusy, VideoTooLarge
from settings import Settings
from usecases.video_analysis import VideoOptions, VideoResult
from usecases.video_jobs import Status, VideoJobs
from video_clips import write_clip

OPTIONS = VideoOptions(sample_fps=5, identify=False)


class Upload:
    def __init__(self, data: bytes, filename: str = "clip.avi") -> None:
        self.file = io.BytesIO(data)
        self.filename = filename

    async def read(self, size: int = -1) -> bytes:
        return self.file.read(size)


class StepByStep:
    """Analyses that report one progress step, then wait until the test lets them finish."""

    def __init__(self) -> None:
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.release: dict[str, asyncio.Event] = {}
        self.cancelled: list[Path] = []

    async def check(self, options: VideoOptions) -> None:
        return None

    async def analyse(self, path, info, options, progress, annotated=None) -> VideoResult:
        gate = self.release.setdefault(path.name, asyncio.Event())
        progress(1)
        await self.started.put(path.name)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(path)
            raise
        return VideoResult([], [], 0, info.frame_count, 1, 1.0, 0.0, None, [])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.avi", [], seconds=1, size=(160, 120)).read_bytes()


def settings(tmp_path: Path, **changes) -> Settings:
    return Settings(video_dir=tmp_path / "videos", max_video_jobs=1, video_queue=1, video_result_ttl_s=60, **changes)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_jobs_run_one_at_a_time_beyond_the_pool_wait_and_beyond_the_queue_are_refused(tmp_path, clip) -> None:
    async def scenario() -> None:
        analysis = StepByStep()
        jobs = VideoJobs(analysis, settings(tmp_path))
        await jobs.start()
        first = await jobs.submit(Upload(clip), OPTIONS)
        second = await jobs.submit(Upload(clip), OPTIONS)
        with pytest.raises(VideoJobsBusy) as busy:
            await jobs.submit(Upload(clip), OPTIONS)
        assert busy.value.retry_after_s >= 1
        assert await analysis.started.get() == first.upload.name
        assert (first.status, second.status) == (Status.RUNNING, Status.QUEUED)
        assert first.progress == pytest.approx(1 / first.info.frame_count)
        analysis.release[first.upload.name].set()
        assert await analysis.started.get() == second.upload.name  # the worker took the next job
        assert first.status is Status.DONE and first.progress == 1.0 and not first.upload.exists()
        analysis.release[second.upload.name].set()
        await jobs.close()

    run(scenario())


def test_a_cancelled_running_job_stops_frees_its_worker_and_leaves_no_file(tmp_path, clip) -> None:
    async def scenario() -> None:
        analysis = StepByStep()
        jobs = VideoJobs(analysis, settings(tmp_path))
        await jobs.start()
        running = await jobs.submit(Upload(clip), OPTIONS)
        await analysis.started.get()
        assert jobs.delete(running.id) is Status.RUNNING
        with pytest.raises(VideoJobNotFound):
            jobs.get(running.id)
        after = await jobs.submit(Upload(clip), OPTIONS)
        assert await analysis.started.get() == after.upload.name  # the only worker is free again
        assert analysis.cancelled == [running.upload] and not running.upload.exists()
        analysis.release[after.upload.name].set()
        await jobs.close()

    run(scenario())


def test_a_queued_job_deleted_never_runs(tmp_path, clip) -> None:
    async def scenario() -> None:
        analysis = StepByStep()
        jobs = VideoJobs(analysis, settings(tmp_path))
        await jobs.start()
        first = await jobs.submit(Upload(clip), OPTIONS)
        queued = await jobs.submit(Upload(clip), OPTIONS)
        await analysis.started.get()
        assert jobs.delete(queued.id) is Status.QUEUED and not queued.upload.exists()
        third = await jobs.submit(Upload(clip), OPTIONS)  # its place in the queue is free
        analysis.release[first.upload.name].set()
        assert await analysis.started.get() == third.upload.name
        analysis.release[third.upload.name].set()
        await jobs.close()

    run(scenario())


def test_results_are_forgotten_after_the_ttl(tmp_path, clip) -> None:
    async def scenario() -> None:
        analysis, clock = StepByStep(), Clock()
        jobs = VideoJobs(analysis, settings(tmp_path), clock=clock)
        await jobs.start()
        job = await jobs.submit(Upload(clip), OPTIONS)
        await analysis.started.get()
        analysis.release[job.upload.name].set()
        while job.status is not Status.DONE:
            await asyncio.sleep(0)
        clock.now += 59
        assert jobs.get(job.id) is job
        clock.now += 2
        with pytest.raises(VideoJobNotFound, match="restart"):
            jobs.get(job.id)
        await jobs.close()

    run(scenario())


@pytest.mark.parametrize(
    ("data", "changes", "error"),
    [
        (b"not a video at all" * 100, {}, InvalidVideo),
        (None, {"max_video_bytes": 1000}, VideoTooLarge),
        (None, {"max_video_seconds": 0.5}, VideoTooLarge),
    ],
)
def test_a_bad_upload_is_refused_at_submission_and_leaves_no_file(tmp_path, clip, data, changes, error) -> None:
    async def scenario() -> None:
        jobs = VideoJobs(StepByStep(), settings(tmp_path, **changes))
        await jobs.start()
        with pytest.raises(error):
            await jobs.submit(Upload(data or clip), OPTIONS)
        assert list(jobs.folder.iterdir()) == [] and jobs.jobs == {} and jobs.receiving == 0
        await jobs.close()

    run(scenario())


def test_files_left_by_a_previous_process_are_removed_at_start(tmp_path) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "abc.upload").write_bytes(b"x")
    (folder / "abc.annotated.mp4").write_bytes(b"x")
    (folder / "keep.txt").write_bytes(b"x")

    async def scenario() -> None:
        jobs = VideoJobs(StepByStep(), settings(tmp_path))
        await jobs.start()
        assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]
        await jobs.close()

    run(scenario())

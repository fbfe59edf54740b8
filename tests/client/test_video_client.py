"""Integration: the client's video methods and `python -m frtriton_client video` against the real API on real Triton."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from conftest import ROOT, ApiProcess
from frtriton_client import FRTritonClient, InvalidRequest, NotFound, VideoJob
from frtriton_client.__main__ import main
from video_clips import Shown, write_clip

pytestmark = pytest.mark.integration

PERSON = "John_Bolton"
STEP_S = 0.2


@pytest.fixture(scope="module")
def server(triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("video-client")
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(folder / "gallery.db"), "MAX_VIDEO_JOBS": "1"}
    api = ApiProcess(env, folder / "api.log").start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def fr(server: ApiProcess) -> Iterator[FRTritonClient]:
    with FRTritonClient(server.url, api_key=server.key, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def enrolled_clip(fr: FRTritonClient, lfw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """John Bolton enrolled from three photos; a 4 s clip of his fifth walking across the frame."""
    photos = sorted((lfw_dir / "deepfunneled" / PERSON).glob("*.jpg"))
    person = fr.enroll("John Bolton", photos[:3])
    portrait = cv2.imread(str(photos[4]))
    clip = write_clip(tmp_path_factory.mktemp("clip") / "walk.mp4", [Shown(portrait, 0.5, 3.5, 10, 380)], 4)
    return person.id, clip


def test_identify_video_waits_reports_progress_and_names_the_person(fr: FRTritonClient, enrolled_clip) -> None:
    person_id, clip = enrolled_clip
    seen: list[VideoJob] = []
    job = fr.identify_video(clip, progress=seen.append, poll_s=0.05, include_faces=True)
    assert job.status == "done" and seen and seen[-1].status == "done"
    fractions = [j.progress for j in seen if j.progress is not None]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    [person] = job.result.people
    assert person.id == person_id and abs(person.seconds - 3.0) <= 2 * STEP_S
    [track] = job.result.tracks
    assert abs(track.first_s - 0.5) <= STEP_S and abs(track.last_s - 3.4) <= STEP_S
    assert track.best_face.aligned.startswith("data:image/png;base64,")


def test_without_waiting_the_job_is_returned_queued_and_can_be_cancelled(fr: FRTritonClient, enrolled_clip) -> None:
    _, clip = enrolled_clip
    job = fr.identify_video(clip.read_bytes(), wait=False, identify=False)
    assert job.status in ("queued", "running", "done") and job.result is None
    fr.cancel_video(job.id)
    with pytest.raises(NotFound, match="restart"):
        fr.video_job(job.id)


def test_a_file_that_is_not_a_video_raises_invalid_request(fr: FRTritonClient, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    with pytest.raises(InvalidRequest, match="not a video") as error:
        fr.identify_video(text)
    assert error.value.status == 400


def test_the_command_line_prints_a_progress_bar_and_the_summary_and_saves_the_annotated_video(
    server: ApiProcess, enrolled_clip, tmp_path: Path
) -> None:
    _, clip = enrolled_clip
    out, err = io.StringIO(), io.StringIO()
    annotated = tmp_path / "annotated.mp4"
    code = main(
        ["video", str(clip), "--url", server.url, "--api-key", server.key, "--annotate", str(annotated)],
        out=out,
        err=err,
    )
    assert code == 0, err.getvalue()
    assert "100.0 %" in err.getvalue() and "[" + "#" * 30 + "]" in err.getvalue()
    table = out.getvalue()
    assert "John Bolton" in table and "(unknown)" in table and "0 track(s)" in table
    assert cv2.VideoCapture(str(annotated)).read()[0]


def test_the_command_line_runs_as_a_module_and_fails_clearly_without_the_key(server: ApiProcess, enrolled_clip):
    _, clip = enrolled_clip
    done = subprocess.run(
        [sys.executable, "-m", "frtriton_client", "video", str(clip), "--url", server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1 and "401" in done.stderr and "X-API-Key" in done.stderr

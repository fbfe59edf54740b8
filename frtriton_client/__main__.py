"""Command line of the FR Triton client.

    python -m frtriton_client video lobby.mp4                    # who appears, when: a progress bar, then a table
    python -m frtriton_client video lobby.mp4 --annotate out.mp4 --sample-fps 2 --url http://gallery:3000

The key comes from --api-key, --api-key-file, or FRTRITON_API_KEY (as for `FRTritonClient`);
`--no-identify` only tracks faces and needs no key. Exit status: 0 done, 1 the job failed or the
service refused it (the reason on stderr), 130 interrupted (the job is cancelled).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from frtriton_client.client import FRTritonClient
from frtriton_client.errors import FRTritonError
from frtriton_client.video_results import VideoJob, VideoResult

BAR_WIDTH = 30
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


def progress_bar(job: VideoJob, out: TextIO) -> None:
    """One line, redrawn in place: [#####.....]  42 %  756 frames  running."""
    if job.progress is None:
        out.write(f"\r{job.frames_read} frames read  {job.status}   ")
    else:
        filled = int(round(job.progress * BAR_WIDTH))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        out.write(f"\r[{bar}] {job.progress * 100:5.1f} %  {job.frames_read} frames  {job.status}   ")
    out.flush()


def summary_table(result: VideoResult) -> str:
    """The people seen, then every track, as plain text columns."""
    lines = [
        f"{result.duration_s:.1f} s of video, {result.frames_read} frames read, {result.frames_sampled} sampled, "
        f"analysed in {result.processing_s:.1f} s",
        "",
        f"{'person':<30} {'on screen':>10}  tracks",
    ]
    for person in result.people:
        lines.append(f"{person.name[:30]:<30} {person.seconds:>9.1f}s  {', '.join(map(str, person.tracks))}")
    lines.append(f"{'(unknown)':<30} {'':>10}  {result.unknown_tracks} track(s)")
    lines += ["", f"{'track':>5} {'from':>8} {'to':>8} {'frames':>7}  {'identity':<30} {'similarity':>10}"]
    for track in result.tracks:
        name = track.identity.name if track.identity else "unknown"
        similarity = f"{track.identity.similarity:.3f}" if track.identity else ""
        lines.append(
            f"{track.track_id:>5} {track.first_s:>7.1f}s {track.last_s:>7.1f}s {track.frames:>7}  "
            f"{name[:30]:<30} {similarity:>10}"
        )
    lines += [f"warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m frtriton_client", description="FR Triton client")
    commands = parser.add_subparsers(dest="command", required=True)
    video = commands.add_parser("video", help="find, track and identify the people in a video file")
    video.add_argument("file", type=Path)
    video.add_argument("--url", default="http://localhost:3000")
    video.add_argument("--api-key", default=None)
    video.add_argument("--api-key-file", default=None)
    video.add_argument("--sample-fps", type=float, default=None, help="frames analysed per second (service default 5)")
    video.add_argument("--no-identify", action="store_true", help="track faces only (no key needed)")
    video.add_argument("--annotate", type=Path, default=None, metavar="OUT.mp4", help="save the annotated video")
    video.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = parse(argv)
    with FRTritonClient(args.url, api_key=args.api_key, api_key_file=args.api_key_file, timeout=args.timeout) as fr:
        job = None
        try:
            job = fr.submit_video(
                args.file, sample_fps=args.sample_fps, identify=not args.no_identify, annotate=args.annotate is not None
            )
            job = fr.wait_video(job, progress=lambda j: progress_bar(j, err))
        except KeyboardInterrupt:
            if job is not None and not job.finished:
                fr.cancel_video(job.id)
            err.write("\ninterrupted: the job was cancelled\n")
            return EXIT_INTERRUPTED
        except FRTritonError as error:
            err.write(f"\n{error}\n")
            return EXIT_FAILED
        err.write("\n")
        if args.annotate is not None:
            args.annotate.write_bytes(fr.annotated_video(job.id))
            err.write(f"annotated video: {args.annotate}\n")
    out.write(summary_table(job.result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Use case: find, track and identify the people of one video file (what a video job runs).

Frames are read and sampled in a worker thread (`video.decode`, the next batch read while the
current one is analysed), detected, aligned and embedded by the pipeline as the image routes do
(one detector call per canvas size for a batch of frames, one recognizer call for all their
faces), linked into tracks (`video.tracker`), and each track named from its embedding by the
identification use case. Every batch holds one admission slot (`Slots`: the image routes' FIFO),
so a video takes its turn with them and never starves them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gallery.store import Match
from imaging.draw import KNOWN_COLOUR, UNKNOWN_COLOUR
from pipeline import FacePipeline
from settings import Settings
from usecases.identification import Identification
from usecases.liveness import LivenessCheck, Verdict
from video.annotate import Mark, write_annotated
from video.decode import Frame, FrameReader, VideoInfo, sampling_step
from video.tracker import BestFace, Tracker, TrackerConfig, face_quality_scores, on_screen_seconds
from vision.alignment import align_faces
from vision.detections import Detections
from vision.quality import face_quality

BATCH_FRAMES = 8  # sampled frames per detector batch: one admission slot each, cancellation between them
# Batches in flight at once: the next batch's detection runs while this one's faces are embedded
# (Triton runs the detector on two threads, the recognizer on one: one batch at a time leaves a
# core idle). Each holds its own admission slot. Tracks are still linked in frame order.
PIPELINE_DEPTH = 2


class Slots(Protocol):
    """The admission slots the image routes share (`api.middleware.AdmissionQueue.slot`)."""

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True)
class VideoOptions:
    sample_fps: float
    identify: bool = True
    top_k: int = 5
    threshold: float | None = None
    liveness: bool = False
    annotate: bool = False


@dataclass(frozen=True)
class TrackResult:
    track_id: int
    first_s: float
    last_s: float
    frames: int
    best: BestFace
    crop: np.ndarray  # (S, S, 3) RGB: the best face aligned as the recognizer saw it
    embedding: np.ndarray  # (D,) unit
    identity: Match | None = None  # None: unknown, or not identified
    matches: tuple[Match, ...] = ()
    liveness: Verdict | None = None  # mean real score of the track's faces, only when asked for


@dataclass(frozen=True)
class PersonSeen:
    id: str
    name: str
    seconds: float
    track_ids: tuple[int, ...]


@dataclass(frozen=True)
class VideoResult:
    tracks: list[TrackResult]
    people: list[PersonSeen]  # empty without identification
    unknown_tracks: int
    frames_read: int
    frames_sampled: int
    duration_s: float
    processing_s: float
    threshold: float | None  # the cut identities were named at, None without identification
    warnings: list[str]
    annotated_frames: int | None = None  # frames in the annotated copy, when asked for


@dataclass(frozen=True)
class _Batch:
    """What the models said about a batch of frames: per frame its faces; per face (in order) the rest."""

    detections: list[Detections]
    crops: np.ndarray  # (N, S, S, 3)
    qualities: np.ndarray  # (N,)
    embeddings: np.ndarray  # (N, D)
    verdicts: list[list[Verdict]] | None


@dataclass
class _Faces:
    """What a batch's faces give the tracks: per track its best crop, its liveness scores."""

    crops: dict[int, np.ndarray]
    real_scores: dict[int, list[float]]


class VideoAnalysis:
    def __init__(
        self,
        pipeline: FacePipeline,
        identification: Identification,
        liveness: LivenessCheck,
        settings: Settings,
        slots: Slots,
    ) -> None:
        self.pipeline = pipeline
        self.identification = identification
        self.liveness = liveness
        self.settings = settings
        self.slots = slots

    async def check(self, options: VideoOptions) -> None:
        """Refuse up front what the job could not do: liveness without the model (LivenessUnavailable)."""
        if options.liveness:
            await self.pipeline.require_liveness()

    async def analyse(
        self,
        path: Path,
        info: VideoInfo,
        options: VideoOptions,
        progress: Callable[[int], None],
        annotated: Path | None = None,
    ) -> VideoResult:
        """Tracks, identities and the summary of the video at `path`; `progress(frames_read)` after each batch.

        With `annotated`, the annotated MP4 is written there. Cancelling the task stops it between batches.
        """
        begin = time.perf_counter()
        settings = self.settings
        step = sampling_step(info.fps, options.sample_fps)
        tracker = Tracker(
            TrackerConfig(
                step_s=step, max_gap_s=settings.video_track_gap_s, min_similarity=settings.similarity_threshold
            )
        )
        faces = _Faces({}, {})
        reader = FrameReader(path, info, options.sample_fps, settings.max_video_seconds)
        pending = asyncio.ensure_future(asyncio.to_thread(reader.read, BATCH_FRAMES))
        inflight: collections.deque[tuple[list[Frame], asyncio.Future[_Batch]]] = collections.deque()
        try:
            # shield: a cancelled job must not abandon the reading thread (it finishes its batch, below)
            while frames := await asyncio.shield(pending):
                pending = asyncio.ensure_future(asyncio.to_thread(reader.read, BATCH_FRAMES))  # read ahead
                inflight.append((frames, asyncio.ensure_future(self._infer(frames, options))))
                if len(inflight) >= PIPELINE_DEPTH:
                    link(*await _next(inflight), tracker, faces)
                    progress(reader.frames_read)
            while inflight:
                link(*await _next(inflight), tracker, faces)
        finally:
            for _, task in inflight:
                task.cancel()
            await asyncio.wait([pending, *(task for _, task in inflight)])  # the reading thread finishes first
            await asyncio.to_thread(reader.close)
        progress(reader.frames_read)
        tracks = await self._results(tracker, faces, options)
        people = people_seen(tracks, tracker, step)
        annotated_frames = None
        if annotated is not None:
            annotated_frames = await self._annotate(path, info, options, tracker, tracks, annotated)
        return VideoResult(
            tracks=tracks,
            people=people,
            unknown_tracks=sum(t.identity is None for t in tracks) if options.identify else len(tracks),
            frames_read=reader.frames_read,
            frames_sampled=reader.frames_sampled,
            duration_s=round(reader.frames_read / info.fps, 3),
            processing_s=round(time.perf_counter() - begin, 3),
            threshold=self.identification.threshold(options.threshold) if options.identify else None,
            warnings=reader.warnings(),
            annotated_frames=annotated_frames,
        )

    async def _infer(self, frames: list[Frame], options: VideoOptions) -> _Batch:
        """Faces of a batch of frames: detected, aligned, measured and embedded in one admission slot."""
        images = [frame.pixels for frame in frames]
        async with self.slots.slot():
            detections = await self.pipeline.detect(images)
            size = await self.pipeline.crop_size()
            crops, qualities = await asyncio.to_thread(measure_faces, images, detections, size)
            embeddings = await self.pipeline.embed(crops) if len(crops) else np.zeros((0, 0), np.float32)
            verdicts = await self.liveness.verdicts(images, detections) if options.liveness else None
        return _Batch(detections, crops, qualities, embeddings, verdicts)

    async def _results(self, tracker: Tracker, faces: _Faces, options: VideoOptions) -> list[TrackResult]:
        tracks = tracker.tracks
        named: list[tuple[Match | None, list[Match]]] = [(None, [])] * len(tracks)
        if options.identify and tracks:
            cut = self.identification.threshold(options.threshold)
            named = await self.identification.name(np.stack([t.embedding for t in tracks]), options.top_k, cut)
        results = []
        for track, (identity, matches) in zip(tracks, named, strict=True):
            verdict = None
            if options.liveness:
                score = float(np.mean(faces.real_scores[track.track_id]))
                verdict = Verdict(round(score, 6), score >= self.liveness.threshold)
            results.append(
                TrackResult(
                    track.track_id,
                    track.first_s,
                    track.last_s,
                    track.frames,
                    track.best,
                    faces.crops[track.track_id],
                    track.embedding,
                    identity,
                    tuple(matches),
                    verdict,
                )
            )
        return results

    async def _annotate(
        self,
        path: Path,
        info: VideoInfo,
        options: VideoOptions,
        tracker: Tracker,
        tracks: list[TrackResult],
        target: Path,
    ) -> int:
        labels = {t.track_id: track_label(t) for t in tracks}
        marks: dict[int, list[Mark]] = {}
        for track in tracker.tracks:
            label, colour = labels[track.track_id]
            for frame_index, _, box in track.observations:
                marks.setdefault(frame_index, []).append(Mark(box, label, colour))
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(
                write_annotated,
                path,
                info,
                options.sample_fps,
                self.settings.max_video_seconds,
                target,
                marks,
                lambda: not cancelled.is_set(),
            )
        except asyncio.CancelledError:
            cancelled.set()  # the drawing thread stops at its next batch
            raise


async def _next(inflight: collections.deque) -> tuple[list[Frame], _Batch]:
    frames, task = inflight.popleft()
    return frames, await task


def link(frames: list[Frame], batch: _Batch, tracker: Tracker, faces: _Faces) -> None:
    """Add a batch's faces to the tracks, frame by frame in order; keep new best crops and liveness scores."""
    start = 0
    for position, (frame, found) in enumerate(zip(frames, batch.detections, strict=True)):
        end = start + len(found)
        linked = tracker.update(
            frame.index,
            frame.time_s,
            found.boxes,
            batch.embeddings[start:end],
            found.scores,
            batch.qualities[start:end],
        )
        for offset, item in enumerate(linked):
            if item.is_best:
                faces.crops[item.track_id] = batch.crops[start + offset]
            if batch.verdicts is not None:
                faces.real_scores.setdefault(item.track_id, []).append(batch.verdicts[position][offset].real_score)
        start = end


def measure_faces(images: list[np.ndarray], detections: list[Detections], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned crops (N, S, S, 3) and qualities (N,) of every face of every image, in order."""
    crops = [align_faces(image, found.landmarks, size) for image, found in zip(images, detections, strict=True)]
    crops_all = np.concatenate(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    landmarks = np.concatenate([found.landmarks for found in detections]) if detections else np.zeros((0, 5, 2))
    scores = np.concatenate([found.scores for found in detections]) if detections else np.zeros((0,))
    measured = [face_quality(points, crop) for points, crop in zip(landmarks, crops_all, strict=True)]
    qualities = face_quality_scores(
        scores,
        np.array([q.size for q in measured]),
        np.array([q.yaw for q in measured]),
        np.array([q.pitch for q in measured]),
        np.array([q.sharpness for q in measured]),
    )
    return crops_all, qualities


def track_label(track: TrackResult) -> tuple[str, tuple[int, int, int]]:
    """What the annotated video writes on a track's box, and its colour."""
    if track.identity is not None:
        return f"{track.identity.name} {track.identity.similarity:.2f}", KNOWN_COLOUR
    return f"#{track.track_id} unknown", UNKNOWN_COLOUR


def people_seen(tracks: list[TrackResult], tracker: Tracker, step_s: float) -> list[PersonSeen]:
    """Each identified person once, in order of first appearance: on-screen seconds and their tracks."""
    frames: dict[str, set[int]] = {}
    names: dict[str, str] = {}
    owned: dict[str, list[int]] = {}
    for result, track in zip(tracks, tracker.tracks, strict=True):
        if result.identity is None:
            continue
        person = result.identity.id
        names[person] = result.identity.name
        owned.setdefault(person, []).append(result.track_id)
        frames.setdefault(person, set()).update(index for index, _, _ in track.observations)
    return [
        PersonSeen(person, names[person], round(on_screen_seconds(frames[person], step_s), 3), tuple(owned[person]))
        for person in owned
    ]

"""video.tracker: linking faces of sampled frames into tracks, on hand-made boxes and embeddings (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from video.tracker import Tracker, TrackerConfig, face_quality_scores, on_screen_seconds

STEP_S = 0.2
DIM = 8


def person(seed: int) -> np.ndarray:
    """A unit embedding; different seeds give nearly orthogonal people."""
    vector = np.zeros(DIM, np.float32)
    vector[seed % DIM] = 1.0
    return vector


def looks_like(base: np.ndarray, similarity: float) -> np.ndarray:
    """A unit embedding whose cosine to the unit `base` is `similarity` (it leans towards another axis)."""
    other = np.roll(base, 1)
    vector = similarity * base + np.sqrt(1 - similarity**2) * other
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def box(x: float, y: float = 50.0, side: float = 100.0) -> np.ndarray:
    return np.array([x, y, x + side, y + side], np.float32)


def feed(
    tracker: Tracker, frames: list[list[tuple[np.ndarray, np.ndarray]]], start_index: int = 0, quality: float = 0.8
) -> list[list[int]]:
    """Frames of (box, embedding) faces, one sampling step apart; the track ids each frame's faces got."""
    ids = []
    for offset, faces in enumerate(frames):
        index = start_index + offset
        boxes = np.stack([b for b, _ in faces]) if faces else np.zeros((0, 4), np.float32)
        embeddings = np.stack([e for _, e in faces]) if faces else np.zeros((0, DIM), np.float32)
        n = len(faces)
        linked = tracker.update(
            index, round(index * STEP_S, 6), boxes, embeddings, np.full(n, 0.9), np.full(n, quality, np.float32)
        )
        ids.append([link.track_id for link in linked])
    return ids


def tracker(max_gap_s: float = 2.0) -> Tracker:
    return Tracker(TrackerConfig(step_s=STEP_S, max_gap_s=max_gap_s))


def test_a_face_moving_across_the_frame_stays_one_track() -> None:
    t = tracker()
    ids = feed(t, [[(box(20 + 30 * i), person(0))] for i in range(10)])
    assert ids == [[1]] * 10
    [track] = t.tracks
    assert (track.first_s, track.last_s, track.frames) == (0.0, 1.8, 10)


def test_two_people_side_by_side_keep_their_own_tracks() -> None:
    t = tracker()
    ids = feed(t, [[(box(20 + 5 * i), person(0)), (box(300 - 5 * i), person(1))] for i in range(6)])
    assert ids == [[1, 2]] * 6


def test_two_people_crossing_do_not_swap_tracks() -> None:
    """Their boxes overlap most where they cross, but the embeddings decide."""
    t = tracker()
    frames = [[(box(100 + 20 * i), person(0)), (box(300 - 20 * i), person(1))] for i in range(10)]
    ids = feed(t, frames)
    assert all(frame == [1, 2] for frame in ids)


@pytest.mark.parametrize(
    ("gap_frames", "back_at", "similarity", "tracks"),
    [
        (5, 400, 0.95, 1),  # away 1 s (< 2 s), back elsewhere, same face: joins its track
        (9, 400, 0.95, 1),  # away 1.8 s: still within the gap
        (11, 400, 0.95, 2),  # away 2.2 s: a new track
        (5, 400, 0.4, 2),  # back within the gap but looks different enough: a new track
        (0, 30, 0.4, 1),  # the very next frame, nearly the same place: overlap plus same-person similarity
        (0, 30, 0.2, 2),  # the same place, but below the same-person similarity: someone else
    ],
)
def test_a_face_that_leaves_and_returns_keeps_its_track_only_within_the_gap_and_when_it_agrees(
    gap_frames: int, back_at: float, similarity: float, tracks: int
) -> None:
    t = tracker()
    feed(t, [[(box(20), person(0))] for _ in range(5)])
    feed(t, [[] for _ in range(gap_frames)], start_index=5)
    feed(t, [[(box(back_at), looks_like(person(0), similarity))] for _ in range(3)], start_index=5 + gap_frames)
    assert len(t.tracks) == tracks


def test_a_stranger_in_the_same_place_next_frame_starts_a_new_track() -> None:
    t = tracker()
    ids = feed(t, [[(box(20), person(0))], [(box(22), person(1))]])
    assert ids == [[1], [2]]


def test_one_track_takes_at_most_one_face_per_frame() -> None:
    t = tracker()
    ids = feed(t, [[(box(20), person(0))], [(box(20), person(0)), (box(24), person(0))]])
    assert sorted(ids[1]) == [1, 2]


def test_the_best_face_is_the_highest_quality_and_the_embedding_the_mean_of_the_good_faces() -> None:
    t = tracker()
    first, second, blurred = person(0), looks_like(person(0), 0.8), looks_like(person(0), 0.3)
    for index, (embedding, quality) in enumerate([(first, 0.5), (second, 0.9), (blurred, 0.1)]):
        t.update(index, index * STEP_S, box(20)[None], embedding[None], np.array([0.9]), np.array([quality]))
    [track] = t.tracks
    assert track.best.frame_index == 1 and track.best.quality == pytest.approx(0.9)
    expected = (first + second) / np.linalg.norm(first + second)  # the blurred face is left out
    np.testing.assert_allclose(track.embedding, expected, atol=1e-6)


def test_a_track_without_good_faces_takes_the_mean_of_all() -> None:
    t = tracker()
    feed(t, [[(box(20), person(0))]] * 3, quality=0.05)
    np.testing.assert_allclose(t.tracks[0].embedding, person(0), atol=1e-6)


@pytest.mark.parametrize(
    ("score", "size", "yaw", "pitch", "sharpness", "expected"),
    [
        (1.0, 120, 0, 0, 200, 1.0),  # large, frontal, sharp: full marks
        (0.8, 120, 0, 0, 200, 0.8),  # the detector's doubt counts
        (1.0, 40, 0, 0, 200, 0.5),  # half the full-quality size
        (1.0, 120, 60, 0, 200, 0.5),  # turned 60 degrees
        (1.0, 120, 90, 0, 200, 0.0),  # a profile
        (1.0, 120, 0, 0, 25, 0.25),  # blurred
    ],
)
def test_face_quality_scores(score, size, yaw, pitch, sharpness, expected) -> None:
    [quality] = face_quality_scores(
        np.array([score]), np.array([size]), np.array([yaw]), np.array([pitch]), np.array([sharpness])
    )
    assert quality == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("frames", "seconds"), [(set(), 0.0), ({0, 2, 4}, 0.6), ({0, 1, 2, 3, 4}, 1.0)])
def test_on_screen_seconds_count_distinct_sampled_frames(frames: set[int], seconds: float) -> None:
    assert on_screen_seconds(frames, STEP_S) == pytest.approx(seconds)

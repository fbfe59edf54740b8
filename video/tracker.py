"""Link the faces of consecutive sampled frames into tracks: box overlap and embedding similarity (pure numpy).

The rule (README, Video):

* A face in the next sampled frame (or the one after, when the detector missed one frame) joins a
  track when their boxes overlap (IoU >= `min_iou`) and the embeddings agree (cosine >=
  `min_similarity`, the same-person threshold: two people crossing do not swap tracks).
* A face that was away (left the frame, turned away, hidden) for up to `max_gap_s` joins its old
  track when the embedding alone agrees strongly (cosine >= `rejoin_similarity`), wherever it is.
* After a longer absence it starts a new track; identification then gives both tracks the same
  person, who is listed once with both tracks.

A track is compared by the better of its last face and the normalised mean of its faces. Pairs are
assigned greedily, most similar first, each face and each track at most once per frame. A face's
quality (`face_quality_scores`) picks the track's best face and which faces make its embedding:
the normalised mean of its faces of quality >= `good_quality` (all its faces when none is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vision.boxes import box_iou

# Quality: a face of at least this side (pixels of the aligned crop's square) and this sharpness
# (Laplacian variance of the 112 px crop; LFW's median is 139, a sigma-3 blur at most 28) counts fully.
FULL_QUALITY_SIZE = 80.0
FULL_QUALITY_SHARPNESS = 100.0
CONSECUTIVE_STEPS = 2.5  # a track last seen this many sampling steps ago may still be linked by overlap


@dataclass(frozen=True)
class TrackerConfig:
    step_s: float  # seconds between sampled frames
    max_gap_s: float = 2.0
    min_iou: float = 0.3
    min_similarity: float = 0.25
    rejoin_similarity: float = 0.5
    good_quality: float = 0.25


def face_quality_scores(
    scores: np.ndarray, sizes: np.ndarray, yaws: np.ndarray, pitches: np.ndarray, sharpness: np.ndarray
) -> np.ndarray:
    """(N,) quality in [0, 1] of N faces: detector score x size x frontality x sharpness terms.

    scores (N,) detector confidence; sizes (N,) pixels; yaws, pitches (N,) degrees; sharpness (N,)
    Laplacian variance. Size and sharpness count fully from FULL_QUALITY_*; the pose term is
    cos(yaw) x cos(pitch) (a profile scores 0).
    """
    size_term = np.clip(np.asarray(sizes, np.float64) / FULL_QUALITY_SIZE, 0, 1)
    sharp_term = np.clip(np.asarray(sharpness, np.float64) / FULL_QUALITY_SHARPNESS, 0, 1)
    pose_term = np.clip(np.cos(np.radians(yaws)), 0, 1) * np.clip(np.cos(np.radians(pitches)), 0, 1)
    return (np.asarray(scores, np.float64) * size_term * pose_term * sharp_term).astype(np.float32)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


@dataclass(frozen=True)
class BestFace:
    frame_index: int
    time_s: float
    box: np.ndarray  # (4,)
    score: float
    quality: float


@dataclass
class Track:
    """One face followed through the video; `observations` are (frame index, time, box) per sampled frame."""

    track_id: int
    best: BestFace
    last_box: np.ndarray  # (4,)
    last_embedding: np.ndarray  # (D,) unit
    sum_all: np.ndarray  # (D,) sum of every face's embedding
    sum_good: np.ndarray  # (D,) sum over the faces of quality >= good_quality
    good_faces: int = 0
    observations: list[tuple[int, float, np.ndarray]] = field(default_factory=list)

    @property
    def first_s(self) -> float:
        return self.observations[0][1]

    @property
    def last_s(self) -> float:
        return self.observations[-1][1]

    @property
    def frames(self) -> int:
        return len(self.observations)

    @property
    def embedding(self) -> np.ndarray:
        """(D,) unit: the normalised mean of the good faces, or of all faces when none is good."""
        return _unit(self.sum_good if self.good_faces else self.sum_all)

    def similarity(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) cosine of N unit embeddings (N, D) to this track: the better of its last face and its mean."""
        return np.maximum(embeddings @ self.last_embedding, embeddings @ _unit(self.sum_all))

    def add(
        self,
        frame_index: int,
        time_s: float,
        box: np.ndarray,
        embedding: np.ndarray,
        score: float,
        quality: float,
        good_quality: float,
    ) -> bool:
        """Add one face; True when it became the track's best face."""
        self.observations.append((frame_index, time_s, box))
        self.last_box, self.last_embedding = box, embedding
        self.sum_all = self.sum_all + embedding
        if quality >= good_quality:
            self.sum_good = self.sum_good + embedding
            self.good_faces += 1
        if quality > self.best.quality:
            self.best = BestFace(frame_index, time_s, box, score, quality)
            return True
        return False


@dataclass(frozen=True)
class Linked:
    track_id: int
    is_best: bool  # the face became its track's best face (keep its crop)


class Tracker:
    """Feed it every sampled frame's faces in time order (`update`); `tracks` holds every track made."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self.tracks: list[Track] = []

    def update(
        self,
        frame_index: int,
        time_s: float,
        boxes: np.ndarray,
        embeddings: np.ndarray,
        scores: np.ndarray,
        qualities: np.ndarray,
    ) -> list[Linked]:
        """Link one frame's N faces: boxes (N, 4), unit embeddings (N, D), scores (N,), qualities (N,).

        Returns one `Linked` per face, in order: the track it joined or started.
        """
        config = self.config
        pairs = self._candidate_pairs(time_s, boxes, embeddings)
        assigned: dict[int, Track] = {}
        used: set[int] = set()
        for _, face, track in sorted(pairs, key=lambda p: (-p[0], p[1], p[2].track_id)):
            if face in assigned or track.track_id in used:
                continue
            assigned[face] = track
            used.add(track.track_id)
        out = []
        for face in range(boxes.shape[0]):
            box, embedding = boxes[face].astype(np.float32), embeddings[face].astype(np.float32)
            score, quality = float(scores[face]), float(qualities[face])
            track = assigned.get(face)
            if track is None:
                track = Track(
                    track_id=len(self.tracks) + 1,
                    best=BestFace(frame_index, time_s, box, score, quality),
                    last_box=box,
                    last_embedding=embedding,
                    sum_all=np.zeros_like(embedding),
                    sum_good=np.zeros_like(embedding),
                )
                self.tracks.append(track)
                track.add(frame_index, time_s, box, embedding, score, quality, config.good_quality)
                out.append(Linked(track.track_id, True))
            else:
                out.append(
                    Linked(
                        track.track_id,
                        track.add(frame_index, time_s, box, embedding, score, quality, config.good_quality),
                    )
                )
        return out

    def _candidate_pairs(
        self, time_s: float, boxes: np.ndarray, embeddings: np.ndarray
    ) -> list[tuple[float, int, Track]]:
        """(how well, face, track) for every face a still-open track may take."""
        config = self.config
        pairs: list[tuple[float, int, Track]] = []
        if not boxes.shape[0]:
            return pairs
        recent_s = CONSECUTIVE_STEPS * config.step_s
        for track in self.tracks:
            gap = time_s - track.last_s
            if gap <= 0 or gap > max(config.max_gap_s, recent_s):
                continue  # closed (away too long), or already seen in this frame
            similarity = track.similarity(embeddings)
            overlap = box_iou(track.last_box, boxes) if gap <= recent_s else np.zeros(boxes.shape[0])
            for face in range(boxes.shape[0]):
                if overlap[face] >= config.min_iou and similarity[face] >= config.min_similarity:
                    pairs.append((float(similarity[face] + overlap[face]), face, track))
                elif gap <= config.max_gap_s and similarity[face] >= config.rejoin_similarity:
                    pairs.append((float(similarity[face]), face, track))
        return pairs


def on_screen_seconds(frame_indices: set[int], step_s: float) -> float:
    """Seconds a person is seen: distinct sampled frames they appear in x the sampling step."""
    return len(frame_indices) * step_s

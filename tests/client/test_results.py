"""The client's answers parsed from the API's JSON: the face attributes, and servers that predate them."""

from __future__ import annotations

from frtriton_client import Embedding, EnrollmentQuality, Face, HeadPose, Identification

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

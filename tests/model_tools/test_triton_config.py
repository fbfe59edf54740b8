"""Model extraction into a Triton repository and config generation (real ONNX files, no server)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

import extract_insightface_models as extract
from errors import ModelRepositoryError
from model_tools.triton_config import (
    DETECTOR,
    RECOGNIZER,
    model_tuning,
    read_onnx_signature,
    render_config,
    write_model_configs,
)
from settings import Settings
from triton_service import TritonInstall, find_triton_install, prepare_backend_dir


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    assert extract.main(["--output-dir", str(repo)]) == 0
    return repo


def test_extract_writes_both_models_configs_and_model_info(installed: Path) -> None:
    for name in (DETECTOR, RECOGNIZER):
        assert (installed / name / "1" / "model.onnx").is_file()
        assert (installed / name / "config.pbtxt").is_file()
    info = json.loads((installed / "model_info.json").read_text())
    assert info["pack"] == "buffalo_sc"
    detector = info["models"][DETECTOR]
    assert detector["name"] == "scrfd_500m_bnkps"
    assert detector["source_sha256"] == extract.WHEEL_PACKS["buffalo_sc"].models[0].sha256
    assert detector["normalisation"]["std"] == 128.0
    assert info["models"][RECOGNIZER]["normalisation"]["std"] == 127.5
    for model in info["models"].values():
        data = (installed / model["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == model["sha256"]
    assert not list(installed.rglob("*.tmp-*")) and not list(installed.glob(".staging*"))


def test_extract_makes_every_batch_dimension_dynamic(installed: Path) -> None:
    for name in (DETECTOR, RECOGNIZER):
        signature = read_onnx_signature(installed / name / "1" / "model.onnx")
        assert all(spec.shape[0] == -1 for spec in (*signature.inputs, *signature.outputs)), signature
    recognizer = read_onnx_signature(installed / RECOGNIZER / "1" / "model.onnx")
    assert recognizer.inputs[0].shape == (-1, 112, 112, 3)  # uint8 pixels: normalisation folded in
    assert recognizer.outputs[0].shape == (-1, 512)  # the source graph declares [1, 512]


def test_generated_config_describes_a_batched_cpu_model(installed: Path) -> None:
    text = (installed / RECOGNIZER / "config.pbtxt").read_text()
    assert 'name: "fr_model"' in text
    assert f"max_batch_size: {model_tuning(RECOGNIZER, Settings())['max_batch_size']}" in text
    assert 'name: "image" data_type: TYPE_UINT8 dims: [ 112, 112, 3 ]' in text
    assert 'data_type: TYPE_FP32 dims: [ 512 ]' in text
    assert "dynamic_batching" in text and "kind: KIND_CPU" in text
    detector = (installed / DETECTOR / "config.pbtxt").read_text()
    for output in ("score_8", "bbox_16", "kps_32"):
        assert f'name: "{output}"' in detector
    assert 'name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ]' in detector


def test_config_uses_the_native_onnxruntime_platform_when_available(installed: Path) -> None:
    signature = read_onnx_signature(installed / RECOGNIZER / "1" / "model.onnx")
    native = render_config(RECOGNIZER, signature, native_onnxruntime=True, tuning=model_tuning(RECOGNIZER, Settings()))
    python = render_config(RECOGNIZER, signature, native_onnxruntime=False, tuning=model_tuning(RECOGNIZER, Settings()))
    assert 'platform: "onnxruntime_onnx"' in native and "backend:" not in native
    assert 'backend: "python"' in python and "platform:" not in python


def test_write_model_configs_switches_the_python_model_file(installed: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / RECOGNIZER / "1").mkdir(parents=True)
    (repo / RECOGNIZER / "1" / "model.onnx").write_bytes((installed / RECOGNIZER / "1" / "model.onnx").read_bytes())
    write_model_configs(repo, native_onnxruntime=False, settings=Settings())
    assert (repo / RECOGNIZER / "1" / "model.py").is_file()
    assert (repo / RECOGNIZER / "1" / "fr_nchwc.py").is_file()  # the stub's in-memory graph rewrite
    write_model_configs(repo, native_onnxruntime=True, settings=Settings())
    assert not (repo / RECOGNIZER / "1" / "model.py").exists()
    assert not (repo / RECOGNIZER / "1" / "fr_nchwc.py").exists()
    assert 'platform: "onnxruntime_onnx"' in (repo / RECOGNIZER / "config.pbtxt").read_text()


def test_tuning_and_warm_up_come_from_the_settings(installed: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for name in (DETECTOR, RECOGNIZER):
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / "model.onnx").write_bytes((installed / name / "1" / "model.onnx").read_bytes())
    settings = Settings(
        detector_instances=2, detector_threads=3, triton_queue_delay_us=900,
        detector_input_size=640, detector_fit_sizes=[256], detector_extra_sizes=[128],
    )
    write_model_configs(repo, native_onnxruntime=False, settings=settings)
    detector = (repo / DETECTOR / "config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in detector
    assert 'key: "intra_op_threads" value: { string_value: "3" }' in detector
    assert "max_queue_delay_microseconds: 900" in detector
    # one zero image per canvas the pipeline sends, so no first request pays ONNX Runtime's set-up
    for side in (128, 256, 640):
        assert f"dims: [ {side}, {side}, 3 ] zero_data: true" in detector
    assert detector.count("zero_data") == 3
    recognizer = (repo / RECOGNIZER / "config.pbtxt").read_text()
    assert "count: 1 kind: KIND_CPU" in recognizer and "dims: [ 112, 112, 3 ] zero_data: true" in recognizer


def test_write_model_configs_on_an_empty_repository_says_how_to_fill_it(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match="extract_insightface_models.py"):
        write_model_configs(tmp_path, native_onnxruntime=False, settings=Settings())


def _wheel_with_wrong_pin(role: str) -> extract.Source:
    source = extract.WHEEL_PACKS["buffalo_sc"]
    models = tuple(dataclasses.replace(m, sha256="0" * 64) if m.role == role else m for m in source.models)
    return dataclasses.replace(source, models=models)


@pytest.mark.parametrize("role", [DETECTOR, RECOGNIZER])
def test_checksum_mismatch_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    monkeypatch.setitem(extract.WHEEL_PACKS, "buffalo_sc", _wheel_with_wrong_pin(role))
    assert extract.main(["--output-dir", str(tmp_path)]) == 1
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_failed_install_leaves_the_previous_repository_intact(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    assert extract.main(["--output-dir", str(repo)]) == 0
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    monkeypatch.setitem(extract.WHEEL_PACKS, "buffalo_sc", _wheel_with_wrong_pin(RECOGNIZER))
    assert extract.main(["--output-dir", str(repo)]) == 1
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before


def test_read_onnx_signature_rejects_a_non_onnx_file(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a protobuf at all \xff\xfe")
    with pytest.raises(ModelRepositoryError, match="not a readable ONNX model"):
        read_onnx_signature(bogus)


def test_triton_install_is_found_in_the_pytriton_wheel(tmp_path: Path) -> None:
    install = find_triton_install()
    assert install.binary.is_file()
    backend_dir = prepare_backend_dir(install, tmp_path / "backends")
    names = {p.name for p in (backend_dir / "python").iterdir()}
    assert {"libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub"} <= names


def test_native_onnxruntime_is_detected_from_the_backend_directory(tmp_path: Path) -> None:
    (tmp_path / "python").mkdir()
    install = TritonInstall(tmp_path / "tritonserver", tmp_path, (), None)
    assert not install.native_onnxruntime
    (tmp_path / "onnxruntime").mkdir()
    assert install.native_onnxruntime

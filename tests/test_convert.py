"""convert_to_onnx.py: real backbones, checkpoint formats, mismatch errors, ONNX equal to PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="torch is a dev dependency (requirements-dev.txt)")

import convert_to_onnx as convert  # noqa: E402
from conftest import model_repository  # noqa: E402


def trained_looking(arch: str, seed: int = 0) -> torch.nn.Module:
    """A backbone with random weights *and* random BatchNorm statistics, so BN folding is exercised."""
    torch.manual_seed(seed)
    model = convert.build_backbone(arch)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("arch", convert.ARCHITECTURES)
def test_build_backbone_gives_512_d_embeddings_for_112px_faces(arch: str) -> None:
    model = convert.build_backbone(arch).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 512)


def test_build_backbone_rejects_unknown_architectures() -> None:
    with pytest.raises(convert.ConversionError, match="iresnet50"):
        convert.build_backbone("resnet9000")


def save(state: dict, path: Path, wrap: str) -> Path:
    if wrap == "state_dict":
        state = {"state_dict": state, "epoch": 7}
    elif wrap == "module":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("arch", "wrap"), [("iresnet50", "plain"), ("mobilefacenet", "state_dict"),
                                            ("iresnet18", "module")])
def test_conversion_round_trips_with_outputs_equal_to_pytorch(arch: str, wrap: str, tmp_path: Path, capsys) -> None:
    model = trained_looking(arch)
    weights = save(model.state_dict(), tmp_path / "w.pth", wrap)
    out = tmp_path / "out" / "model.onnx"
    assert convert.main(["--arch", arch, "--weights-path", str(weights), "--onnx-path", str(out)]) == 0
    assert "max |ONNX Runtime - PyTorch|" in capsys.readouterr().out
    onnx.checker.check_model(str(out))
    import onnxruntime as ort

    batch = np.random.default_rng(5).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(session.run(None, {"input.1": batch})[0], expected, atol=1e-3)


def test_a_checkpoint_for_another_architecture_is_a_clear_error(tmp_path: Path, capsys) -> None:
    weights = save(convert.build_backbone("iresnet18").state_dict(), tmp_path / "r18.pth", "plain")
    out = tmp_path / "m.onnx"
    code = convert.main(["--arch", "iresnet34", "--weights-path", str(weights), "--onnx-path", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not fit iresnet34" in err and "missing" in err and "layer1.2.conv1" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "m.onnx"
    code = convert.main(["--arch", "mobilefacenet", "--weights-path", str(junk), "--onnx-path", str(out)])
    assert code == 1 and "not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_conversion_into_a_repository_installs_and_regenerates_the_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(model_repository(), repo)
    weights = save(trained_looking("mobilefacenet").state_dict(), tmp_path / "mbf.pth", "plain")
    target = repo / "fr_model" / "1" / "model.onnx"
    assert convert.main(["--arch", "mobilefacenet", "--weights-path", str(weights), "--onnx-path", str(target)]) == 0
    info = json.loads((repo / "model_info.json").read_text())
    assert info["models"]["fr_model"]["name"] == "mobilefacenet (mbf.pth)"
    assert info["models"]["face_detector"]["name"] == "scrfd_500m_bnkps"  # the detector stays
    config = (repo / "fr_model" / "config.pbtxt").read_text()
    assert 'name: "image" data_type: TYPE_UINT8' in config and 'name: "embedding"' in config
    assert "dims: [ 512 ]" in config

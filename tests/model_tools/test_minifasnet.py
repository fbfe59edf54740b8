"""model_tools/minifasnet.py: the networks, checkpoint names and loading, and the authors' sample scores.

The real checkpoints come from ROOT.parent/shared/models/antispoof (tests that need them skip
without); the rest uses randomly initialised networks saved in the checkpoints' formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a dev dependency (requirements-dev.txt)")

from conftest import ROOT, trained_looking  # noqa: E402
from model_tools import minifasnet as mf  # noqa: E402

ANTISPOOF_DIR = ROOT.parent / "shared" / "models" / "antispoof"
PARAMETERS = {"MiniFASNetV2": 434_560, "MiniFASNetV1SE": 433_586}  # the authors quote 0.43 M for both
# Boxes SCRFD (scrfd_500m_bnkps, 640 canvas) finds in the authors' samples, and the real scores the
# model README gives for them (the authors' pipeline on these boxes).
SAMPLES = {
    "image_F1.jpg": ((192.08517456054688, 105.22239685058594, 385.3489990234375, 354.49615478515625), 0.29),
    "image_F2.jpg": ((148.0910186767578, 193.38839721679688, 357.31732177734375, 507.25457763671875), 0.002),
    "image_T1.jpg": ((117.73983001708984, 109.57731628417969, 296.461181640625, 351.2591857910156), 1.00),
}


def real_checkpoint(name: str) -> Path:
    path = ANTISPOOF_DIR / name
    if not path.is_file():
        pytest.skip(f"anti-spoofing checkpoint {name} not found in {ANTISPOOF_DIR}")
    return path


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("2.7_80x80_MiniFASNetV2.pth", (2.7, 80, 80, "MiniFASNetV2")),
        ("4_0_0_80x80_MiniFASNetV1SE.pth", (4.0, 80, 80, "MiniFASNetV1SE")),
        ("/some/folder/1_80x60_MiniFASNetV2.pth", (1.0, 80, 60, "MiniFASNetV2")),
        ("org_1_80x60_MobileFaceNetPv1.pth", (None, 80, 60, "MobileFaceNetPv1")),
    ],
)
def test_checkpoint_names_give_scale_size_and_network(filename: str, expected: tuple) -> None:
    name = mf.parse_checkpoint_name(filename)
    assert (name.scale, name.height, name.width, name.network) == expected


@pytest.mark.parametrize("filename", ["MiniFASNetV2.pth", "2.7_80_MiniFASNetV2.pth", "2.7_80x80_MiniFASNetV2.onnx"])
def test_badly_named_checkpoints_are_refused(filename: str) -> None:
    with pytest.raises(mf.AntiSpoofError, match="is not named"):
        mf.parse_checkpoint_name(filename)


@pytest.mark.parametrize("network", sorted(mf.NETWORKS))
def test_networks_map_80px_crops_to_three_logits(network: str) -> None:
    model = mf.build_network(network).eval()
    assert mf.head_kernel(80, 80) == (5, 5)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[network]
    with torch.no_grad():
        assert model(torch.rand(2, 3, 80, 80) * 255).shape == (2, mf.NUM_CLASSES)


def test_an_unknown_network_is_refused() -> None:
    with pytest.raises(mf.AntiSpoofError, match="MiniFASNetV2"):
        mf.build_network("MiniFASNetV3")


@pytest.mark.parametrize("network", sorted(mf.NETWORKS))
def test_real_checkpoints_load_strictly(network: str) -> None:
    [upstream] = [item for item in mf.UPSTREAM_FILES if item.filename.endswith(f"_{network}.pth")]
    path = real_checkpoint(upstream.filename)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip file: still weights-only
    assert all(key.startswith("module.") for key in raw)  # saved from DataParallel
    model, name = mf.load_checkpoint(path)
    assert name.network == network and not model.training
    assert set(model.state_dict()) == {key.removeprefix("module.") for key in raw}
    assert mf._sha256(path) == upstream.sha256 and path.stat().st_size == upstream.size


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy pickle", "zip"])
@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain keys", "module. keys"])
def test_saved_state_dicts_load_in_every_format(tmp_path: Path, legacy: bool, prefix: str) -> None:
    model = trained_looking("MiniFASNetV1SE")
    path = tmp_path / "4_0_0_80x80_MiniFASNetV1SE.pth"
    state = {prefix + key: value for key, value in model.state_dict().items()}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    loaded, _ = mf.load_checkpoint(path)
    batch = torch.rand(3, 3, 80, 80) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)


def test_a_checkpoint_of_the_other_network_is_refused_with_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "2.7_80x80_MiniFASNetV1SE.pth"  # V2 weights under a V1SE name
    torch.save(trained_looking("MiniFASNetV2").state_dict(), path)
    with pytest.raises(mf.AntiSpoofError, match="does not fit MiniFASNetV1SE") as error:
        mf.load_checkpoint(path)
    assert "missing" in str(error.value) and "se_module" in str(error.value) and "wrong shape" in str(error.value)


class NotWeights:
    """Any pickled object that is not tensors: weights_only loading refuses to build it."""


def test_a_pickle_that_is_not_weights_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "2.7_80x80_MiniFASNetV2.pth"
    torch.save({"conv1.conv.weight": NotWeights()}, path)
    with pytest.raises(mf.AntiSpoofError, match="weights-only"):
        mf.load_checkpoint(path)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(mf.AntiSpoofError, match="not a readable"):
        mf.read_state_dict(tmp_path / "broken.pth")
    with pytest.raises(mf.AntiSpoofError, match="no \\*.pth"):
        mf.checkpoints_in(tmp_path / "nowhere")


def test_the_reference_scorer_reproduces_the_authors_sample_scores() -> None:
    import cv2

    for name in mf.UPSTREAM_FILES:
        real_checkpoint(name.filename)
    reference = mf.TorchReference.from_folder(ANTISPOOF_DIR)
    assert [model_name.scale for _, model_name in reference.models] == [2.7, 4.0]
    for filename, (box, expected) in SAMPLES.items():
        path = ANTISPOOF_DIR / "samples" / filename
        if not path.is_file():
            pytest.skip(f"sample {path} not found")
        image = cv2.imread(str(path))  # BGR
        [score] = reference.real_scores(image, np.array([box]))
        assert score == pytest.approx(expected, abs=0.005), filename
        probabilities = reference.probabilities(image, np.array([box, box]))
        assert probabilities.shape == (2, 2, 3)
        np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert reference.real_scores(image, np.zeros((0, 4))).shape == (0,)

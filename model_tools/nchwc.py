"""Graph rewrites that keep ONNX Runtime in its NCHWc layout, done in memory when a model is loaded.

Two of them: `nchwc_prelu` (PRelu's Max form as depthwise convolutions) and `pad_channels`
(zero filters up to a multiple of the layout's channel block).

The installed graphs carry PRelu as Max(x, x * s) (`model_tools.graphs.max_for_prelu`, bit-exact).
`nchwc_prelu` turns that into depthwise 1x1 convolutions, a Relu and an Add, the same function
to float rounding, which ONNX Runtime runs without leaving its blocked layout. The Python-backend
stub (`onnx_python_backend.py`) applies it in memory when it loads `model.onnx`, so the
installed file, its sha256 (the gallery's model fingerprint) and every repository stay as
they are. `triton_config.write_model_configs` copies this file next to the stub as
`fr_nchwc.py`: it imports nothing from the project (numpy and onnx only).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def nchwc_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite every Max(x, x * s) of `max_for_prelu` with a per-channel slope s (C, 1, 1) (in place) as

        Relu(DepthwiseConv1x1(x, 1 - s)) + DepthwiseConv1x1(x, s)

    which is the same function for s <= 1 ((1 - s) * Relu(x) = Relu((1 - s) * x) when 1 - s >= 0;
    equal to float rounding, ~1e-7 relative, not bit for bit). Why: ONNX Runtime runs convolutions
    in its blocked NCHWc layout, and Mul and Max have no NCHWc kernel, so every Max form cost a
    reorder out of the layout and one back: 27 % of MiniFASNet's time and 21 % of w600k_mbf's on
    one thread. Convolutions, Relu (fused into the convolution) and Add all stay in NCHWc:
    w600k_mbf 12.0 -> 9.3 ms a face, both MiniFASNets 6.0 -> 5.1 (README, Performance).
    A scalar slope (channels unknown) keeps its Max form.
    """
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {output: index for index, node in enumerate(nodes) for output in node.output}
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    replaced: dict[int, list[onnx.NodeProto]] = {}
    dropped: set[int] = set()
    slopes: set[str] = set()
    for index, node in enumerate(nodes):
        if node.op_type != "Max" or len(node.input) != 2 or node.input[1] not in producer:
            continue
        x, scaled = node.input
        mul_index = producer[scaled]
        mul = nodes[mul_index]
        slope = constants.get(mul.input[1]) if mul.op_type == "Mul" and mul.input[0] == x else None
        if slope is None or uses[scaled] != 1 or slope.ndim != 3 or slope.shape[1:] != (1, 1):
            continue
        if float(slope.max()) > 1.0:
            continue
        channels, y = slope.shape[0], node.output[0]
        base = node.name or y
        weights = slope.astype(np.float32).reshape(channels, 1, 1, 1)  # one 1x1 filter per channel
        positive = numpy_helper.from_array(1.0 - weights, f"{base}_fr_w_pos")
        linear = numpy_helper.from_array(weights, f"{base}_fr_w_lin")
        model.graph.initializer.extend([positive, linear])
        depthwise = {"group": int(channels), "kernel_shape": [1, 1]}
        replaced[index] = [
            helper.make_node("Conv", [x, positive.name], [f"{y}_fr_pos"], name=f"{base}_fr_pos", **depthwise),
            helper.make_node("Relu", [f"{y}_fr_pos"], [f"{y}_fr_relu"], name=f"{base}_fr_relu"),
            helper.make_node("Conv", [x, linear.name], [f"{y}_fr_lin"], name=f"{base}_fr_lin", **depthwise),
            helper.make_node("Add", [f"{y}_fr_lin", f"{y}_fr_relu"], [y], name=f"{base}_fr_add"),
        ]
        dropped.add(mul_index)
        slopes.add(mul.input[1])
    rewritten = []
    for index, node in enumerate(nodes):
        if index in replaced:
            rewritten += replaced[index]
        elif index not in dropped:
            rewritten.append(node)
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    # The slopes only the removed Muls read go (old exports also list initializers as graph inputs).
    unused = slopes - {name for node in rewritten for name in node.input}
    for container in (model.graph.initializer, model.graph.input):
        kept = [item for item in container if item.name not in unused]
        del container[:]
        container.extend(kept)
    return model


# ONNX Runtime's NCHWc channel block is 16 with AVX-512 and 8 with AVX2: a multiple of 16 is both.
CHANNEL_BLOCK = 16
# Ops that treat every channel on its own: a padded tensor goes through them padded.
_CHANNELWISE_UNARY = frozenset(
    {"Relu", "Sigmoid", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Identity", "GlobalAveragePool"}
)
_CHANNELWISE_BINARY = frozenset({"Add", "Mul", "Sub"})
_SPATIAL_AXES = frozenset({2, 3, -1, -2})


class _Padding:
    """The state of one `pad_channels` pass: which tensors carry padded channels, and the new nodes."""

    def __init__(self, model: onnx.ModelProto, block: int) -> None:
        self.model, self.block = model, block
        self.constants = {init.name: init for init in model.graph.initializer}
        self.channels: dict[str, tuple[int, int]] = {}  # padded tensor -> (real, padded) channel counts
        self.nodes: list[onnx.NodeProto] = []
        self._sliced: dict[str, str] = {}

    def value(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.constants[name]) if name in self.constants else None

    def constant(self, name: str, array: np.ndarray) -> str:
        if name not in self.constants:
            self.constants[name] = numpy_helper.from_array(array, name)
            self.model.graph.initializer.append(self.constants[name])
        return name

    def padded_constant(self, name: str, axis: int, size: int, fill: float = 0.0) -> str:
        """The constant `name` with its `axis` padded to `size` by `fill` (a new initializer)."""
        array = self.value(name)
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, size - array.shape[axis])
        return self.constant(f"{name}_fr_pad{axis}_{size}", np.pad(array, widths, constant_values=fill))

    def real(self, name: str) -> str:
        """`name` with only its real channels: a Slice after a padded tensor (one per tensor)."""
        if name not in self.channels:
            return name
        if name not in self._sliced:
            sliced = self._sliced[name] = f"{name}_fr_real"
            bounds = [
                self.constant(f"fr_pad_{key}_{value}", np.array([value], np.int64))
                for key, value in (("start", 0), ("end", self.channels[name][0]), ("axis", 1))
            ]
            self.nodes.append(helper.make_node("Slice", [name, *bounds], [sliced], name=sliced))
        return self._sliced[name]

    def conv(self, node: onnx.NodeProto) -> bool:
        """Pad a convolution with constant weights (W: (Cout, Cin / group, kh, kw)); False if it is not one
        this pass handles (its input is then sliced back to the real channels)."""
        weight = self.value(node.input[1])
        if weight is None or any(name in self.channels for name in node.input[1:]):
            return False
        group = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        real_in, padded_in = self.channels.get(node.input[0], (weight.shape[1] * group,) * 2)
        depthwise = group > 1 and group == real_in == weight.shape[0] and weight.shape[1] == 1
        if padded_in != real_in and not (depthwise or group == 1):
            return False  # grouped but not depthwise: the groups would shift
        real_out = weight.shape[0]
        if depthwise:
            padded_out = padded_in
        elif group == 1:
            padded_out = -(-real_out // self.block) * self.block
        else:  # extra filters would move real ones into another group
            padded_out = real_out
        if padded_in != real_in and group == 1:
            node.input[1] = self.padded_constant(node.input[1], 1, padded_in)  # zero weights read the padding
        if padded_out != real_out:
            node.input[1] = self.padded_constant(node.input[1], 0, padded_out)  # zero filters make the padding
            if len(node.input) > 2 and node.input[2]:
                node.input[2] = self.padded_constant(node.input[2], 0, padded_out)
            if depthwise:
                for attribute in node.attribute:
                    if attribute.name == "group":
                        attribute.i = padded_out
            self.channels[node.output[0]] = (real_out, padded_out)
        return True

    def batch_norm(self, node: onnx.NodeProto) -> bool:
        if node.input[0] not in self.channels or any(self.value(name) is None for name in node.input[1:5]):
            return False
        padded = self.channels[node.input[0]][1]
        # scale 0, bias 0, mean 0, variance 1: the padded channels stay exactly 0
        for position, fill in zip(range(1, 5), (0.0, 0.0, 0.0, 1.0), strict=True):
            node.input[position] = self.padded_constant(node.input[position], 0, padded, fill)
        self.channels[node.output[0]] = self.channels[node.input[0]]
        return True

    def elementwise(self, node: onnx.NodeProto) -> bool:
        """Add / Mul / Sub of padded tensors alike, or of one with per-channel or channel-free constants."""
        shape = next(self.channels[name] for name in node.input if name in self.channels)
        inputs = list(node.input)
        for position, name in enumerate(inputs):
            if name in self.channels:
                if self.channels[name] != shape:
                    return False
                continue
            value = self.value(name)
            if value is None:
                return False
            if value.ndim >= 3 and value.shape[-3] == shape[0] != 1:
                inputs[position] = self.padded_constant(name, value.ndim - 3, shape[1])
            elif value.ndim >= 3 and value.shape[-3] != 1:
                return False
        del node.input[:]
        node.input.extend(inputs)
        self.channels[node.output[0]] = shape
        return True

    def reduce_mean(self, node: onnx.NodeProto) -> bool:
        axes = next((list(attribute.ints) for attribute in node.attribute if attribute.name == "axes"), None)
        if axes is None and len(node.input) > 1:  # opset 18: the axes are an input
            value = self.value(node.input[1])
            axes = None if value is None else value.tolist()
        keepdims = next((attribute.i for attribute in node.attribute if attribute.name == "keepdims"), 1)
        if node.input[0] not in self.channels or not axes or keepdims != 1 or not set(axes) <= _SPATIAL_AXES:
            return False
        self.channels[node.output[0]] = self.channels[node.input[0]]
        return True

    def visit(self, node: onnx.NodeProto) -> None:
        padded = [name for name in node.input if name in self.channels]
        if node.op_type == "Conv":
            kept = self.conv(node)
        elif not padded:
            kept = True
        elif node.op_type in _CHANNELWISE_UNARY:
            self.channels[node.output[0]] = self.channels[node.input[0]]
            kept = True
        elif node.op_type == "BatchNormalization":
            kept = self.batch_norm(node)
        elif node.op_type in _CHANNELWISE_BINARY:
            kept = self.elementwise(node)
        elif node.op_type == "ReduceMean":
            kept = self.reduce_mean(node)
        else:
            kept = False
        if not kept:  # every other op sees the real channels only
            reals = [self.real(name) for name in node.input]
            del node.input[:]
            node.input.extend(reals)
            if node.op_type == "Conv":
                self.conv(node)
        self.nodes.append(node)


def pad_channels(model: onnx.ModelProto, block: int = CHANNEL_BLOCK) -> onnx.ModelProto:
    """A copy of `model` with convolutions' output channels padded by zero filters to a multiple of `block`.

    ONNX Runtime keeps a depthwise convolution in its NCHWc layout only when its channels are a
    multiple of the block: MiniFASNet's pruned plan (13, 26, 77, 103, 154, 231 channels) fell back
    to plain NCHW 78 times a network, each with a reorder out of the layout and back (both
    MiniFASNets, 14 faces: 73 -> 38 ms on one thread). The padded channels hold exact zeros (zero
    filter, zero bias) and every convolution reading them has zero weights there, so the real
    channels get the same sums plus zero terms: equal to float rounding (the blocked kernels add
    in another order), not bit for bit. Padded tensors go through per-channel ops
    (`_CHANNELWISE_*`, BatchNormalization, ReduceMean over H and W); any other op gets the real
    channels back through a Slice, so every graph output keeps its shape. Raises ValueError if a
    graph output would come out padded (`model` itself is never changed).
    """
    padded = onnx.ModelProto()
    padded.CopyFrom(model)
    read_before = {name for node in padded.graph.node for name in node.input}
    original = {init.name for init in padded.graph.initializer}
    state = _Padding(padded, block)
    for node in list(padded.graph.node):
        state.visit(node)
    outputs = {output.name for output in padded.graph.output}
    if outputs & state.channels.keys():
        raise ValueError(f"pad_channels: graph outputs {sorted(outputs & state.channels.keys())} would be padded")
    del padded.graph.node[:]
    padded.graph.node.extend(state.nodes)
    # The constants the padded copies replaced go, and the intermediate copies (a weight padded on
    # both axes); old exports also list initializers as graph inputs.
    created = set(state.constants) - original
    replaced = (read_before | created) - {name for node in state.nodes for name in node.input} - outputs
    for container in (padded.graph.initializer, padded.graph.input):
        kept = [item for item in container if item.name not in replaced]
        del container[:]
        container.extend(kept)
    return padded

"""PRelu in the form ONNX Runtime keeps in its NCHWc layout: a graph rewrite done when a model is loaded.

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

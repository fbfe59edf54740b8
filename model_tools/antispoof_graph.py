"""Served anti-spoofing graphs: uint8 NHWC crops in, softmax probabilities out, proven equal to PyTorch.

The exported MiniFASNet graphs (`antispoof_export.py`) take what the authors' PyTorch code takes:
(N, 3, 80, 80) float32 BGR 0-255, and return (N, 3) logits. For serving, the input handling and
the softmax move into the graph, as `model_tools.graphs.fold_input` does for the face models:

- input `image`: (N, 80, 80, 3) **uint8** BGR, the crops exactly as `vision.antispoof.liveness_crops`
  makes them: a quarter of the bytes on the wire, no float conversion or transposition in the API.
  Cast uint8 -> float32 is exact and the models want 0-255 unnormalised, so nothing is lost.
- output `probabilities`: softmax over the 3 classes (class 1 = real), so the API only averages.
- PRelu becomes Max(x, x * slope) (`model_tools.graphs.max_for_prelu`: bit-exact for slopes <= 1, and
  ONNX Runtime's CPU PRelu is slow; the Python-backend stub then loads it in the NCHWc form of
  `model_tools.nchwc`).

Two layouts (see `benchmarks/antispoof_models.py` for their cost):

- one model per network (`serve_single`): `image` (N, 80, 80, 3) -> `probabilities` (N, 3);
- one model holding all networks (`serve_combined`): `image` (N, M, 80, 80, 3), crop m made at
  model m's scale -> `probabilities` (N, M, 3). With `stacked=False` it takes M inputs
  `image_<m>` (N, 80, 80, 3) instead (measured only).

`check_served` proves a served graph on ONNX Runtime against the PyTorch models (<= 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from model_tools.minifasnet import NUM_CLASSES, AntiSpoofError

SERVED_INPUT = "image"
SERVED_OUTPUT = "probabilities"
BATCH_DIM = "batch"
NHWC_TO_NCHW = (0, 3, 1, 2)
BGR_FROM_RGB = (2, 1, 0)  # channel indices that turn RGB pixels into BGR (and back)
PARITY_ATOL = 1e-5


def _raw_interface(model: onnx.ModelProto) -> tuple[str, str, int, int]:
    """(input name, output name, height, width) of an exported (N, 3, H, W) -> (N, 3) graph."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise AntiSpoofError("expected one (N, 3, H, W) input and one (N, 3) logits output")
    dims = inputs[0].type.tensor_type.shape.dim
    height, width = dims[2].dim_value, dims[3].dim_value
    if len(dims) != 4 or dims[1].dim_value != 3 or height <= 0 or width <= 0:
        raise AntiSpoofError("the anti-spoofing input must be N x 3 x H x W with a fixed H and W")
    return inputs[0].name, model.graph.output[0].name, height, width


def _preprocess_nodes(source: str, target: str, prefix: str, channel_order: str) -> list[onnx.NodeProto]:
    """uint8 NHWC `source` -> float32 NCHW BGR `target` (optionally reordering RGB channels first)."""
    nodes = []
    if channel_order == "RGB":
        # A Gather of the three channels: the same numbers reach the first conv, so still exact.
        nodes.append(helper.make_node("Gather", [source, f"{prefix}bgr_index"], [f"{prefix}bgr"], axis=3,
                                      name=f"{prefix}to_bgr"))
        source = f"{prefix}bgr"
    elif channel_order != "BGR":
        raise AntiSpoofError(f"channel order must be BGR or RGB, not {channel_order!r}")
    nodes.append(helper.make_node("Cast", [source], [f"{prefix}pixels"], to=TensorProto.FLOAT, name=f"{prefix}cast"))
    nodes.append(helper.make_node("Transpose", [f"{prefix}pixels"], [target], perm=list(NHWC_TO_NCHW),
                                  name=f"{prefix}nchw"))
    return nodes


def _order_initializers(prefix: str, channel_order: str) -> list[onnx.TensorProto]:
    if channel_order != "RGB":
        return []
    return [helper.make_tensor(f"{prefix}bgr_index", TensorProto.INT64, [3], list(BGR_FROM_RGB))]


def _inline_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop Identity nodes that only rename an initializer (in place).

    The exporter shares equal initializers through Identity nodes (networks whose PReLU slopes are
    all equal, e.g. untrained ones); `max_for_prelu` wants the slope as an initializer itself.
    """
    initializers = {init.name for init in model.graph.initializer}
    outputs = {value.name for value in model.graph.output}
    alias = {node.output[0]: node.input[0] for node in model.graph.node
             if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs}
    nodes = [node for node in model.graph.node if not (node.op_type == "Identity" and node.output[0] in alias)]
    for node in nodes:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _fast_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    from model_tools.graphs import max_for_prelu

    return max_for_prelu(_inline_constant_identities(model))


def _finish(graph: onnx.GraphProto, opset_source: onnx.ModelProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(opset_source.opset_import),
                              producer_name="fr-triton antispoof_graph")
    model.ir_version = opset_source.ir_version
    return model


def serve_single(raw: onnx.ModelProto, channel_order: str = "BGR", fast_prelu: bool = True) -> onnx.ModelProto:
    """One exported network -> `image` (N, H, W, 3) uint8 -> `probabilities` (N, 3) float32."""
    return serve_combined([raw], channel_order=channel_order, fast_prelu=fast_prelu, single=True)


def serve_combined(
    raws: Sequence[onnx.ModelProto],
    channel_order: str = "BGR",
    fast_prelu: bool = True,
    stacked: bool = True,
    single: bool = False,
) -> onnx.ModelProto:
    """M exported networks (same H x W) -> one graph.

    stacked: `image` (N, M, H, W, 3) uint8 -> `probabilities` (N, M, 3).
    not stacked: `image_0` ... `image_<M-1>`, each (N, H, W, 3) -> `probabilities` (N, M, 3).
    single (one network, used by `serve_single`): `image` (N, H, W, 3) -> `probabilities` (N, 3).
    """
    if not raws:
        raise AntiSpoofError("no networks to serve")
    interfaces = [_raw_interface(raw) for raw in raws]
    sizes = {(height, width) for _, _, height, width in interfaces}
    if len(sizes) != 1:
        raise AntiSpoofError(f"the networks take different input sizes {sorted(sizes)}: serve them separately")
    [(height, width)] = sizes
    opsets = {tuple((o.domain, o.version) for o in raw.opset_import) for raw in raws}
    if len(opsets) != 1:
        raise AntiSpoofError("the networks were exported with different opsets")
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    outputs_per_model: list[str] = []
    if stacked and not single:
        inputs.append(helper.make_tensor_value_info(SERVED_INPUT, TensorProto.UINT8,
                                                    [BATCH_DIM, len(raws), height, width, 3]))
    for index, (raw, (raw_input, raw_output, _, _)) in enumerate(zip(raws, interfaces, strict=True)):
        prefix = f"m{index}_"
        graph = onnx.compose.add_prefix(raw, prefix).graph  # unique tensor names per network
        if single:
            source = SERVED_INPUT
            inputs.append(helper.make_tensor_value_info(source, TensorProto.UINT8, [BATCH_DIM, height, width, 3]))
        elif stacked:
            source = f"{prefix}crops"  # (N, H, W, 3): this network's crops, picked out of the stack
            initializers.append(helper.make_tensor(f"{prefix}slot", TensorProto.INT64, [], [index]))
            nodes.append(helper.make_node("Gather", [SERVED_INPUT, f"{prefix}slot"], [source], axis=1,
                                          name=f"{prefix}pick"))
        else:
            source = f"{SERVED_INPUT}_{index}"
            inputs.append(helper.make_tensor_value_info(source, TensorProto.UINT8, [BATCH_DIM, height, width, 3]))
        nodes += _preprocess_nodes(source, prefix + raw_input, prefix, channel_order)
        initializers += _order_initializers(prefix, channel_order)
        nodes += list(graph.node)
        initializers += list(graph.initializer)
        probabilities = SERVED_OUTPUT if single else f"{prefix}probabilities"
        nodes.append(helper.make_node("Softmax", [prefix + raw_output], [probabilities], axis=1,
                                      name=f"{prefix}softmax"))
        outputs_per_model.append(probabilities)
    if single:
        output_shape = [BATCH_DIM, NUM_CLASSES]
    else:
        # (N, 3) per network -> (N, 1, 3) -> concatenated along the model axis: (N, M, 3).
        initializers.append(helper.make_tensor("model_axis", TensorProto.INT64, [1], [1]))
        expanded = []
        for name in outputs_per_model:
            nodes.append(helper.make_node("Unsqueeze", [name, "model_axis"], [f"{name}_1"], name=f"{name}_unsqueeze"))
            expanded.append(f"{name}_1")
        nodes.append(helper.make_node("Concat", expanded, [SERVED_OUTPUT], axis=1, name="stack_models"))
        output_shape = [BATCH_DIM, len(raws), NUM_CLASSES]
    graph = helper.make_graph(nodes, "antispoof", inputs,
                              [helper.make_tensor_value_info(SERVED_OUTPUT, TensorProto.FLOAT, output_shape)],
                              initializer=initializers)
    model = _finish(graph, raws[0])
    if fast_prelu:
        model = _fast_prelu(model)
    onnx.checker.check_model(model, full_check=True)  # also infers and checks every shape
    return model


# --------------------------------------------------------------------------- proof
def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """A CPU session like the service's: few intra-op threads, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def torch_probabilities(networks: Sequence[torch.nn.Module], crops: np.ndarray) -> np.ndarray:
    """PyTorch reference: crops (M, N, H, W, 3) uint8 BGR -> (M, N, 3) softmax probabilities."""
    out = []
    for network, batch in zip(networks, crops, strict=True):
        tensor = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)).astype(np.float32))
        with torch.no_grad():
            out.append(torch.softmax(network.eval()(tensor), dim=1).numpy())
    return np.stack(out)


def served_probabilities(served: onnx.ModelProto | ort.InferenceSession, crops: np.ndarray,
                         channel_order: str = "BGR") -> np.ndarray:
    """Run a served graph of either layout on crops (M, N, H, W, 3) BGR uint8 -> (M, N, 3)."""
    run = served if isinstance(served, ort.InferenceSession) else session(served)
    names = [value.name for value in run.get_inputs()]
    if channel_order == "RGB":
        crops = np.ascontiguousarray(crops[..., ::-1])
    if names == [SERVED_INPUT] and len(run.get_inputs()[0].shape) == 4:  # one network
        return np.stack([run.run([SERVED_OUTPUT], {SERVED_INPUT: batch})[0] for batch in crops])
    if names == [SERVED_INPUT]:  # stacked: (N, M, H, W, 3)
        feed = {SERVED_INPUT: np.ascontiguousarray(crops.transpose(1, 0, 2, 3, 4))}
    else:
        feed = {name: crops[index] for index, name in enumerate(names)}
    return run.run([SERVED_OUTPUT], feed)[0].transpose(1, 0, 2)


def check_served(served: Sequence[onnx.ModelProto], networks: Sequence[torch.nn.Module], crops: np.ndarray,
                 channel_order: str = "BGR", atol: float = PARITY_ATOL) -> float:
    """Largest |served - PyTorch| probability on crops (M, N, H, W, 3); AntiSpoofError above `atol`.

    `served` is one combined graph, or one graph per network (in the networks' order).
    """
    expected = torch_probabilities(networks, crops)
    if len(served) == 1 and len(networks) > 1:
        actual = served_probabilities(served[0], crops, channel_order)
    else:
        actual = np.concatenate([served_probabilities(graph, crops[index : index + 1], channel_order)
                                 for index, graph in enumerate(served)])
    if actual.shape != expected.shape:
        raise AntiSpoofError(f"served output shape {actual.shape} differs from PyTorch's {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    if not difference <= atol:
        raise AntiSpoofError(f"the served graph differs from PyTorch by {difference:.3g} > {atol}")
    return difference

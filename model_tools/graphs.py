"""Make any SCRFD detector or ArcFace-style recognizer ONNX file servable, or say why not.

Triton batches along a leading dimension, and the pipeline finds SCRFD's outputs
by name (`score_<stride>`, `bbox_<stride>`, `kps_<stride>`). InsightFace's release
packs do neither: `det_10g.onnx` and friends have numeric output names and 2-D,
batch-folded outputs, and `w600k_mbf.onnx` declares a fixed batch of 1. The
functions here rewrite the graph interface (never the weights) and then prove the
result on ONNX Runtime: outputs of a batch of two equal the outputs of each image
alone, so a model that cannot batch is refused instead of silently mixing images.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from errors import ModelRepositoryError

BATCH_DIM = "batch"
PROBE_SIZE = 640  # detector probe canvas: any multiple of 32 works
SCRFD_WIDTHS = {1: "score", 4: "bbox", 10: "kps"}  # last dimension -> output kind
FIRST_STRIDE = 8


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # shape-hint warnings of the original graphs are noise here
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelRepositoryError(f"ONNX Runtime cannot load the model: {error}") from error


def _run(session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
    try:
        return session.run(None, {session.get_inputs()[0].name: batch})
    except Exception as error:
        raise ModelRepositoryError(f"ONNX Runtime cannot run the model on a {batch.shape} input: {error}") from error


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _set_batch_dim(value: onnx.ValueInfoProto) -> None:
    dims = value.type.tensor_type.shape.dim
    if dims:
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph input and output a symbolic leading batch dimension (in place)."""
    for value in [*_graph_inputs(model), *model.graph.output]:
        _set_batch_dim(value)
    # Intermediate shape hints may still carry the old fixed batch of 1; they are optional.
    del model.graph.value_info[:]
    return model


def _single_image_input(model: onnx.ModelProto, role: str) -> onnx.ValueInfoProto:
    inputs = _graph_inputs(model)
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(inputs) != 1 or len(dims) != 4 or dims[1].dim_value not in (0, 3):
        described = [
            (i.name, [d.dim_value or d.dim_param or "?" for d in i.type.tensor_type.shape.dim]) for i in inputs
        ]
        raise ModelRepositoryError(f"{role} must have one Nx3xHxW image input; it has {described}")
    return inputs[0]


def _check_batching(model: onnx.ModelProto, shape: tuple[int, int, int], role: str) -> list[np.ndarray]:
    """Run a batch of 2 and each image alone; refuse a graph whose batch mixes images."""
    session = _session(model)
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (2, *shape)).astype(np.float32)
    together = _run(session, batch)
    for index in range(2):
        alone = _run(session, batch[index : index + 1])
        for joint, single in zip(together, alone, strict=True):
            if joint.shape[0] != 2 or not np.allclose(joint[index], single[0], atol=1e-4, rtol=1e-3):
                raise ModelRepositoryError(
                    f"{role} does not batch: outputs for a batch of 2 differ from single images "
                    f"(shapes {joint.shape} vs {single.shape})"
                )
    return _run(session, batch[:1])


# --------------------------------------------------------------------------- recognizer
def prepare_recognizer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Validate an embedding model (one Nx3xHxW input, one NxD output) and make it batchable."""
    image = _single_image_input(model, "recognizer")
    if len(model.graph.output) != 1:
        names = [o.name for o in model.graph.output]
        hint = " (this looks like a face detector: swapped files?)" if len(names) in (6, 9, 10, 15) else ""
        raise ModelRepositoryError(f"recognizer must have one embedding output; it has {len(names)}: {names}{hint}")
    dims = image.type.tensor_type.shape.dim
    height, width = dims[2].dim_value, dims[3].dim_value
    if height <= 0 or width <= 0:
        raise ModelRepositoryError("recognizer input must have a fixed height and width (e.g. 3x112x112)")
    model = make_batch_dynamic(model)
    [embedding] = _check_batching(model, (3, height, width), "recognizer")
    if embedding.ndim != 2:
        raise ModelRepositoryError(f"recognizer output must be N x D embeddings; it is {embedding.shape}")
    return model


# --------------------------------------------------------------------------- detector
def _rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in model.graph.output:
        if value.name == old:
            value.name = new


def _free_role_names(model: onnx.ModelProto, names: list[str], roles: list[str]) -> list[str]:
    """Rename tensors that already use a name we are about to give an output; return new output names."""
    used = {name for node in model.graph.node for name in (*node.input, *node.output)}
    renamed = list(names)
    for index, role in enumerate(roles):
        if role in used and names[index] != role:
            holder = f"{role}_fr_original"
            _rename_tensor(model, role, holder)
            renamed = [holder if name == role else name for name in renamed]
    return renamed


def _scrfd_roles(shapes: list[tuple[int, ...]], names: list[str]) -> list[str]:
    """New name (`score_8`, ...) for each output from its probe shape: width -> kind, rows -> stride."""
    kinds: dict[str, list[int]] = {}
    for index, shape in enumerate(shapes):
        kind = SCRFD_WIDTHS.get(shape[-1])
        if kind is None or len(shape) not in (2, 3):
            raise ModelRepositoryError(
                f"detector output {names[index]!r} has shape {shape}: SCRFD outputs are "
                "(anchors, 1) scores, (anchors, 4) boxes and (anchors, 10) keypoints per stride"
            )
        kinds.setdefault(kind, []).append(index)
    if set(kinds) != {"score", "bbox", "kps"} or len({len(v) for v in kinds.values()}) != 1:
        found = {k: len(v) for k, v in kinds.items()}
        raise ModelRepositoryError(
            f"detector must have SCRFD score/bbox/kps outputs for every stride (with keypoints); found {found}"
            + (" (this looks like a recognizer: swapped files?)" if len(shapes) == 1 else "")
        )
    roles = [""] * len(shapes)
    for kind, indices in kinds.items():
        rows = [shapes[i][-2] for i in indices]
        anchors = rows[0] // (PROBE_SIZE // FIRST_STRIDE) ** 2 if rows else 0
        for i, count in sorted(zip(indices, rows, strict=True), key=lambda pair: -pair[1]):
            cells = count // max(anchors, 1)
            stride = round(PROBE_SIZE / np.sqrt(cells)) if cells else 0
            if anchors < 1 or stride < 1 or (PROBE_SIZE // stride) ** 2 * anchors != count:
                raise ModelRepositoryError(f"detector output {names[i]!r} with {count} rows fits no stride")
            roles[i] = f"{kind}_{stride}"
    return roles


def prepare_detector(model: onnx.ModelProto) -> onnx.ModelProto:
    """Validate an SCRFD detector with keypoints; name outputs by stride, batch-first."""
    image = _single_image_input(model, "detector")
    if len(model.graph.output) == 1:
        raise ModelRepositoryError(
            "detector must have SCRFD score/bbox/kps outputs per stride; it has a single output "
            "(this looks like a recognizer: swapped files?)"
        )
    _set_batch_dim(image)
    dims = image.type.tensor_type.shape.dim
    for dim in dims[2:]:  # any canvas size: the pipeline picks it
        dim.Clear()
        dim.dim_param = "size"
    del model.graph.value_info[:]
    probe = _run(_session(model), np.zeros((1, 3, PROBE_SIZE, PROBE_SIZE), np.float32))
    names = [o.name for o in model.graph.output]
    roles = _scrfd_roles([p.shape for p in probe], names)
    folded = [p.ndim == 2 for p in probe]  # (anchors, C): batch folded into the rows
    names = _free_role_names(model, names, roles)
    # Opset-11-compatible interface nodes: Shape -> Gather(0) gives the batch size as [N].
    nodes = [
        helper.make_node("Shape", [image.name], ["_fr_input_shape"]),
        helper.make_node("Gather", ["_fr_input_shape", "_fr_zero"], ["_fr_batch"], axis=0),
    ]
    initializers = [helper.make_tensor("_fr_zero", TensorProto.INT64, [1], [0])]
    outputs = []
    for name, role, fold, value in zip(names, roles, folded, probe, strict=True):
        width = value.shape[-1]
        if fold:
            initializers.append(helper.make_tensor(f"_fr_rest_{role}", TensorProto.INT64, [2], [-1, width]))
            nodes.append(helper.make_node("Concat", ["_fr_batch", f"_fr_rest_{role}"], [f"_fr_shape_{role}"], axis=0))
            nodes.append(helper.make_node("Reshape", [name, f"_fr_shape_{role}"], [role]))
        elif name != role:
            nodes.append(helper.make_node("Identity", [name], [role]))
        outputs.append(helper.make_tensor_value_info(role, TensorProto.FLOAT, [BATCH_DIM, "anchors", width]))
    if len(nodes) == 2:  # already batch-first and named by stride: leave the graph alone
        nodes = []
        initializers = []
    model.graph.initializer.extend(initializers)
    for index, node in enumerate(nodes):
        node.name = f"fr_triton_interface_{index}"
    model.graph.node.extend(nodes)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    _check_batching(model, (3, 128, 160), "detector")
    return model


FOLDED_INPUT = "image"  # the uint8 NHWC input a folded model takes


def fold_input(model: onnx.ModelProto, mean: float, std: float) -> onnx.ModelProto:
    """Take uint8 NHWC RGB pixels and normalise inside the graph: (x - mean) / std, to NCHW.

    A quarter of the bytes per request (no float32 tensors on the wire or in shared memory)
    and no normalisation or transposition in the API. The original float input becomes an
    internal tensor fed by Cast -> Sub -> Mul -> Transpose.
    """
    [image] = _graph_inputs(model)
    dims = [d.dim_value if d.dim_value > 0 else (d.dim_param or "size") for d in image.type.tensor_type.shape.dim]
    new_input = helper.make_tensor_value_info(FOLDED_INPUT, TensorProto.UINT8, [BATCH_DIM, dims[2], dims[3], 3])
    nodes = [
        helper.make_node("Cast", [FOLDED_INPUT], ["_fr_pixels"], to=TensorProto.FLOAT, name="fr_fold_cast"),
        helper.make_node("Sub", ["_fr_pixels", "_fr_mean"], ["_fr_centred"], name="fr_fold_sub"),
        helper.make_node("Mul", ["_fr_centred", "_fr_scale"], ["_fr_scaled"], name="fr_fold_mul"),
        helper.make_node("Transpose", ["_fr_scaled"], [image.name], perm=[0, 3, 1, 2], name="fr_fold_nchw"),
    ]
    model.graph.initializer.extend([
        helper.make_tensor("_fr_mean", TensorProto.FLOAT, [], [float(mean)]),
        helper.make_tensor("_fr_scale", TensorProto.FLOAT, [], [1.0 / float(std)]),
    ])
    graph_nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes + graph_nodes)  # keep topological order
    inputs = [value for value in model.graph.input if value.name != image.name]
    del model.graph.input[:]
    model.graph.input.extend([new_input, *inputs])
    return model


def max_for_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite PRelu(x, s) as Max(x, x * s) wherever every constant slope is <= 1 (in place).

    For s <= 1 the two are equal bit for bit: x >= 0 gives x >= s*x, x < 0 gives s*x >= x, and
    s*x is the same product PRelu computes. ONNX Runtime's CPU PRelu kernel is slow (7 of the
    17 ms of w600k_mbf on one thread); Mul + Max run in under 1 ms. A slope above 1 (never
    seen in InsightFace's models) keeps its PRelu.
    """
    slopes = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        slope = slopes.get(node.input[1]) if node.op_type == "PRelu" and len(node.input) == 2 else None
        if slope is None or slope.size == 0 or float(slope.max()) > 1.0:
            nodes.append(node)
            continue
        [x, s], [y] = node.input, node.output
        scaled = f"{y}_fr_scaled"
        nodes.append(helper.make_node("Mul", [x, s], [scaled], name=f"{node.name or y}_fr_mul"))
        nodes.append(helper.make_node("Max", [x, scaled], [y], name=f"{node.name or y}_fr_max"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _check_same_outputs(
    changed: onnx.ModelProto, original: onnx.ModelProto, batch: np.ndarray, what: str, feed: np.ndarray | None = None
) -> None:
    """Refuse a rewrite unless `changed` on `feed` (default `batch`) gives `original`'s outputs on `batch`."""
    expected = _run(_session(original), batch)
    actual = _run(_session(changed), batch if feed is None else feed)
    for a, e in zip(actual, expected, strict=True):
        if a.shape != e.shape or not np.allclose(a, e, atol=1e-4, rtol=1e-3):
            raise ModelRepositoryError(f"{what} changed the model's outputs")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def prepare(
    model: onnx.ModelProto, role: str, normalisation: dict | None = None
) -> onnx.ModelProto:
    """`prepare_detector` or `prepare_recognizer`, then `max_for_prelu`; with `normalisation`
    ({"mean", "std"}) also `fold_input`. Each rewrite is proven equal on ONNX Runtime; then
    the ONNX checker."""
    prepared = prepare_detector(model) if role == "detector" else prepare_recognizer(model)
    dims = [d.dim_value for d in _graph_inputs(prepared)[0].type.tensor_type.shape.dim]
    hw = (dims[2], dims[3]) if dims[2] > 0 and dims[3] > 0 else (128, 160)
    rng = np.random.default_rng(2)
    original = _copy(prepared)
    prepared = max_for_prelu(prepared)
    _check_same_outputs(prepared, original, rng.uniform(-1, 1, (2, 3, *hw)).astype(np.float32), "replacing PRelu")
    if normalisation is not None:
        original = _copy(prepared)
        mean, std = float(normalisation["mean"]), float(normalisation["std"])
        prepared = fold_input(prepared, mean, std)
        pixels = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
        normalised = ((pixels.astype(np.float32) - mean) * (1.0 / std)).transpose(0, 3, 1, 2)
        _check_same_outputs(prepared, original, normalised, "folding the normalisation into the graph", feed=pixels)
    try:
        onnx.checker.check_model(prepared)
    except onnx.checker.ValidationError as error:
        raise ModelRepositoryError(f"{role} fails the ONNX checker after preparation: {error}") from error
    return prepared

"""Triton model configuration: each model's `config.pbtxt`, generated from its ONNX graph.

Reads every `<model>/<version>/model.onnx` of a repository (input and output names, dtypes,
dims) and writes `config.pbtxt` next to it: the native `onnxruntime_onnx` platform when the
Triton installation has that backend, else the Python backend running
`model_tools/onnx_python_backend.py` (copied in as `model.py`). Batching, instance and thread counts come
from `Settings`; the detector is warmed up at every canvas size the pipeline sends.
`triton_service.py` calls this at start-up for the Triton it finds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from errors import ModelRepositoryError
from settings import PROJECT_ROOT, Settings

DETECTOR = "face_detector"
RECOGNIZER = "fr_model"
ANTISPOOF = "antispoof"  # optional: both MiniFASNets in one graph (model_tools/antispoof_install.py)
MODEL_FILENAME = "model.onnx"
MODEL_INFO = "model_info.json"
PYTHON_BACKEND_SOURCE = PROJECT_ROOT / "model_tools" / "onnx_python_backend.py"
# The stub's graph rewrite, copied next to it (it imports nothing from the project).
PYTHON_BACKEND_HELPERS = {"fr_nchwc.py": PROJECT_ROOT / "model_tools" / "nchwc.py"}

ONNX_TO_TRITON_DTYPE = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}

# Largest batch per model. The recognizer's is larger because one group photo sends all
# its faces at once; the client splits bigger batches.
MAX_BATCH_SIZE: dict[str, int] = {DETECTOR: 8, RECOGNIZER: 32, ANTISPOOF: 32}
DEFAULT_MAX_BATCH_SIZE = 8
# What model_info.json says of a model that its config carries to the API (as `fr_<key>`):
# GET /models shows them, and the anti-spoofing crops take their scales from there.
MODEL_INFO_PARAMETERS = ("name", "sha256", "source_file", "scales", "channel_order", "licence")


def model_tuning(name: str, settings: Settings) -> dict[str, int]:
    """How Triton serves one model: batch limit, batcher delay, instances and ONNX Runtime threads."""
    instances, threads = {
        DETECTOR: (settings.detector_instances, settings.detector_threads),
        RECOGNIZER: (settings.recognizer_instances, settings.recognizer_threads),
    }.get(name, (1, 1))
    return {
        "max_batch_size": MAX_BATCH_SIZE.get(name, DEFAULT_MAX_BATCH_SIZE),
        "max_queue_delay_us": settings.triton_queue_delay_us,
        "instances": instances,
        "threads": threads,
    }


# --------------------------------------------------------------------------- ONNX signatures
@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton's name, e.g. "TYPE_FP32"
    shape: tuple[int, ...]  # -1 for a dynamic dimension, batch included


@dataclass(frozen=True)
class OnnxSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = ONNX_TO_TRITON_DTYPE.get(tensor_type.elem_type)
    if dtype is None:
        raise ModelRepositoryError(f"tensor {value.name!r} has unsupported ONNX type {tensor_type.elem_type}")
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def read_onnx_signature(path: Path) -> OnnxSignature:
    """Names, dtypes and shapes of a model's graph inputs (initializers excluded) and outputs."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelRepositoryError(f"{path}: not a readable ONNX model ({error})") from error
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(v) for v in model.graph.input if v.name not in initializers)
    outputs = tuple(_tensor_spec(v) for v in model.graph.output)
    return OnnxSignature(inputs, outputs)


# --------------------------------------------------------------------------- config.pbtxt
def _dims(spec: TensorSpec) -> str:
    # max_batch_size > 0: Triton's dims leave out the leading batch dimension.
    return ", ".join(str(d) for d in spec.shape[1:])


def render_config(
    name: str,
    signature: OnnxSignature,
    *,
    native_onnxruntime: bool,
    tuning: Mapping[str, int],
    parameters: Mapping[str, str] | None = None,
    warmup_sizes: Sequence[int] = (),
) -> str:
    """Text of `config.pbtxt` for one ONNX model with a dynamic leading batch dimension.

    `warmup_sizes`: the sides a model with dynamic spatial dimensions (the detector) is
    warmed up at, one zero image each, before Triton calls it ready.
    """
    lines = [f'name: "{name}"']
    if native_onnxruntime:
        lines += ['platform: "onnxruntime_onnx"', f'default_model_filename: "{MODEL_FILENAME}"']
    else:
        lines += ['backend: "python"']
    lines.append(f"max_batch_size: {tuning['max_batch_size']}")
    for section, specs in (("input", signature.inputs), ("output", signature.outputs)):
        entries = [
            f'  {{ name: "{s.name}" data_type: {s.dtype} dims: [ {_dims(s)} ] }}' for s in specs
        ]
        lines.append(f"{section} [\n" + ",\n".join(entries) + "\n]")
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {tuning['max_queue_delay_us']} }}")
    lines.append(f"instance_group [ {{ count: {tuning['instances']} kind: KIND_CPU }} ]")
    lines += _warmup_lines(signature, warmup_sizes)
    params = dict(parameters or {})
    threads = str(tuning["threads"])
    if native_onnxruntime:
        params |= {"intra_op_thread_count": threads, "inter_op_thread_count": "1"}
    else:
        params |= {"intra_op_threads": threads}
    for key, value in sorted(params.items()):
        escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{escaped}" }} }}')
    return "\n".join(lines) + "\n"


def _warmup_lines(signature: OnnxSignature, sizes: Sequence[int]) -> list[str]:
    """`model_warmup`: a zero batch of 1 per input shape the API will send.

    ONNX Runtime's first run of each shape plans its memory (several times a normal call),
    so without it the first request of every canvas size is slow.
    """
    if len(signature.inputs) != 1:
        return []
    [spec] = signature.inputs
    dims = spec.shape[1:]
    fixed = all(d > 0 for d in dims)
    shapes = [dims] if fixed else [tuple(size if d <= 0 else d for d in dims) for size in sizes]
    entries = [
        f'  {{ name: "{spec.name}_{"x".join(map(str, shape))}" batch_size: 1 inputs {{ key: "{spec.name}" '
        f"value: {{ data_type: {spec.dtype} dims: [ {', '.join(map(str, shape))} ] zero_data: true }} }} }}"
        for shape in dict.fromkeys(shapes)
    ]
    return ["model_warmup [\n" + ",\n".join(entries) + "\n]"] if entries else []


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write via a temporary file in the same directory and `os.replace`: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _model_parameters(repo: Path, name: str) -> dict[str, str]:
    """What model_info.json says about a model, exposed through Triton's model config.

    The API reads these over HTTP (normalisation, and what `GET /models` reports), so it
    needs no access to the repository files: it works against a remote Triton too.
    """
    info_path = repo / MODEL_INFO
    if not info_path.is_file():
        return {}
    info = json.loads(info_path.read_text())
    model = info.get("models", {}).get(name, {})
    params = {f"norm_{key}": str(value) for key, value in model.get("normalisation", {}).items()}
    params |= {f"fr_{key}": str(model[key]) for key in MODEL_INFO_PARAMETERS if key in model}
    params |= {f"fr_pack_{key}": str(info[key]) for key in ("pack", "source", "installed_at") if key in info}
    return params


def write_model_configs(repo: Path, *, native_onnxruntime: bool, settings: Settings) -> list[Path]:
    """Generate `config.pbtxt` (and the Python backend's `model.py`) for each model in `repo`.

    Tuning (instances, threads, batcher delay) comes from `settings`, and the detector is
    warmed up at every canvas the pipeline uses (`Settings.detector_canvases`).
    """
    written = []
    model_files = sorted(repo.glob(f"*/*/{MODEL_FILENAME}"))
    if not model_files:
        raise ModelRepositoryError(
            f"no */<version>/{MODEL_FILENAME} under {repo}: run `python extract_insightface_models.py "
            f"--output-dir {repo}` first"
        )
    for model_file in model_files:
        name = model_file.parent.parent.name
        text = render_config(
            name,
            read_onnx_signature(model_file),
            native_onnxruntime=native_onnxruntime,
            tuning=model_tuning(name, settings),
            parameters=_model_parameters(repo, name),
            warmup_sizes=settings.detector_canvases,
        )
        atomic_write(model_file.parent.parent / "config.pbtxt", text)
        python_model = model_file.parent / "model.py"
        helpers = {model_file.parent / name: source for name, source in PYTHON_BACKEND_HELPERS.items()}
        if native_onnxruntime:
            python_model.unlink(missing_ok=True)
            for target in helpers:
                target.unlink(missing_ok=True)
        else:
            atomic_write(python_model, PYTHON_BACKEND_SOURCE.read_bytes())
            for target, source in helpers.items():
                atomic_write(target, source.read_bytes())
        written.append(model_file.parent.parent / "config.pbtxt")
    return written

"""Triton Python-backend model that serves `model.onnx` with ONNX Runtime.

Used only when the Triton installation has no native `onnxruntime_onnx`
backend (the `nvidia-pytriton` wheel ships the Python backend alone).
`model_tools.triton_config.write_model_configs` copies this file to `<model>/<version>/model.py`
next to `model.onnx`; it is generic: input and output names come from the
model's `config.pbtxt`.

All requests handed to one `execute()` call (Triton's dynamic batcher groups
them) run as a single ONNX Runtime call per input shape, so concurrent HTTP
requests share one batched inference.

Every ONNX Runtime call is counted on Triton's metrics port (custom metrics of the Python
backend): `frtriton_onnxruntime_{runs,wall_seconds,cpu_seconds}_total{model}`. The stub
process runs nothing else while `session.run` works, so its process CPU time over the call
is ONNX Runtime's, all threads. `benchmarks/cpu_split.py` subtracts it from the processes'
CPU to get the overhead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class _RunCounters:
    """ONNX Runtime's runs, wall and CPU seconds for one model, as Triton custom metrics (if supported)."""

    def __init__(self, model: str) -> None:
        self._metrics = None
        family_type = getattr(pb_utils, "MetricFamily", None)
        if family_type is None:  # an old Python backend: no custom metrics, nothing counted
            return
        self._families = [
            family_type(name=f"frtriton_onnxruntime_{key}_total", description=text, kind=family_type.COUNTER)
            for key, text in (
                ("runs", "ONNX Runtime session.run calls in the Python-backend stub"),
                ("wall_seconds", "wall time inside ONNX Runtime session.run"),
                ("cpu_seconds", "CPU time of the stub process (all threads) inside ONNX Runtime session.run"),
            )
        ]
        self._metrics = [family.Metric(labels={"model": model}) for family in self._families]

    def add(self, wall_s: float, cpu_s: float) -> None:
        if self._metrics is not None:
            for metric, value in zip(self._metrics, (1.0, wall_s, cpu_s), strict=True):
                metric.increment(value)

    def close(self) -> None:
        # The backend requires metrics to go before their families.
        self._metrics = None
        self._families = None


def _load_graph(model_path: str, prelu_form: str, channel_block: int) -> str | bytes:
    """The graph ONNX Runtime gets, rewritten in memory by `fr_nchwc.py` (copied next to this file) so
    that ONNX Runtime stays in its NCHWc layout: PRelu's Max form as depthwise convolutions (-23 % CPU
    for w600k_mbf, -14 % for the MiniFASNets) unless the config says `prelu_form: max`, and
    convolutions padded with zero filters to a multiple of `channel_block` (-47 % for the
    MiniFASNets' pruned channel counts; config `channel_block: 0` turns it off). model.onnx itself
    is never changed (its sha256 is the gallery's model fingerprint)."""
    if prelu_form != "nchwc" and channel_block <= 0:
        return model_path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import fr_nchwc
        import onnx
    except ImportError:  # an older repository without fr_nchwc.py: the graph as installed
        return model_path
    finally:
        sys.path.pop(0)
    model = onnx.load(model_path)
    if prelu_form == "nchwc":
        model = fr_nchwc.nchwc_prelu(model)
    if channel_block > 0 and hasattr(fr_nchwc, "pad_channels"):
        try:
            model = fr_nchwc.pad_channels(model, channel_block)
        except ValueError as error:  # a graph the padding cannot serve: unpadded, as before
            print(f"{os.path.basename(model_path)}: {error}; served unpadded", file=sys.stderr)
    return model.SerializeToString()


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return default if value in (None, "") else value


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        model_path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        # Two cores are shared by Triton, both models and the API: few intra-op threads
        # (config parameter, see Settings) that sleep instead of spinning while they wait
        # beat ONNX Runtime's default pool, whose spinning threads steal the other core.
        options.intra_op_num_threads = int(_parameter(config, "intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            _load_graph(
                model_path,
                _parameter(config, "prelu_form", "nchwc"),
                int(_parameter(config, "channel_block", "16")),
            ),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self.input_names = [item["name"] for item in config["input"]]
        self.output_names = [item["name"] for item in config["output"]]
        self.counters = _RunCounters(args["model_name"])

    def execute(self, requests: list) -> list:
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        responses: list = [None] * len(requests)
        # Requests of different spatial sizes cannot share one tensor: batch per shape.
        groups: dict[tuple, list[int]] = {}
        for index, tensors in enumerate(inputs):
            key = tuple(tensors[name].shape[1:] for name in self.input_names)
            groups.setdefault(key, []).append(index)
        for indices in groups.values():
            try:
                feed = {
                    name: np.concatenate([inputs[i][name] for i in indices], axis=0)
                    for name in self.input_names
                }
                wall, cpu = time.perf_counter(), time.process_time()
                outputs = self.session.run(self.output_names, feed)
                self.counters.add(time.perf_counter() - wall, time.process_time() - cpu)
            except Exception as error:  # report to the caller instead of killing the stub
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {error}")
                    )
                continue
            start = 0
            for i in indices:
                size = inputs[i][self.input_names[0]].shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + size]))
                        for name, value in zip(self.output_names, outputs, strict=True)
                    ]
                )
                start += size
        return responses

    def finalize(self) -> None:
        self.session = None
        self.counters.close()

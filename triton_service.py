"""Everything that touches Triton: model configs, the server process, the async client.

This is the only module that imports `tritonclient`. Three parts:

* config generation: read each `model.onnx` (names, dtypes, dims) and write its
  `config.pbtxt`, on the native `onnxruntime_onnx` platform when the Triton
  installation has that backend, else on the Python backend running
  `onnx_python_backend.py`;
* the server process: find `tritonserver` (PATH, as in NGC images, or the
  `nvidia-pytriton` wheel), prepare its backend directory and environment, start it;
* `TritonClient`: the asyncio HTTP client the pipeline calls for every inference.

CLI: `python triton_service.py {generate-configs,serve,wait-ready} --repo DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from errors import InferenceUnavailable, ModelRepositoryError
from metrics import TRITON_SECONDS
from settings import PROJECT_ROOT, Settings

DETECTOR = "face_detector"
RECOGNIZER = "fr_model"
MODEL_FILENAME = "model.onnx"
MODEL_INFO = "model_info.json"
PYTHON_BACKEND_SOURCE = PROJECT_ROOT / "onnx_python_backend.py"

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
MAX_BATCH_SIZE: dict[str, int] = {DETECTOR: 8, RECOGNIZER: 32}
DEFAULT_MAX_BATCH_SIZE = 8


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
    params |= {f"fr_{key}": str(model[key]) for key in ("name", "sha256", "source_file") if key in model}
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
        if native_onnxruntime:
            python_model.unlink(missing_ok=True)
        else:
            atomic_write(python_model, PYTHON_BACKEND_SOURCE.read_bytes())
        written.append(model_file.parent.parent / "config.pbtxt")
    return written


# --------------------------------------------------------------------------- the server process
@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path  # as found; `prepare_backend_dir` makes it usable
    library_dirs: tuple[Path, ...]
    python_stub: Path | None  # the wheel's stub for this interpreter; None when backend_dir has it

    @property
    def native_onnxruntime(self) -> bool:
        return (self.backend_dir / "onnxruntime").is_dir()


def find_triton_install() -> TritonInstall:
    """`tritonserver` on PATH (NGC image) or inside the installed `nvidia-pytriton` wheel."""
    on_path = shutil.which("tritonserver")
    if on_path:
        binary = Path(on_path).resolve()
        return TritonInstall(binary, binary.parent.parent / "backends", (), None)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ModelRepositoryError("tritonserver not found: not on PATH and nvidia-pytriton is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ModelRepositoryError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(root / "bin" / "tritonserver", root / "backends", (libs,), stub)


def prepare_backend_dir(install: TritonInstall, dest: Path) -> Path:
    """A backend directory Triton can use: the wheel splits the stub from the backend."""
    if install.python_stub is None:
        return install.backend_dir
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in (
        install.backend_dir / "python" / "libtriton_python.so",
        install.backend_dir / "python" / "triton_python_backend_utils.py",
        install.python_stub,
    ):
        target = python_dir / source.name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.copy2(source, tmp)
            os.replace(tmp, target)
    return dest


# glibc hands every freed block above its mmap threshold back to the kernel, so each request's
# multi-megabyte tensors page-fault in afresh (zeroed page by page). Keeping them in the heap
# cut the API's CPU per image by a fifth (README, Performance). Docker/start.sh sets the same
# for the API; an operator's own values win.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def server_environment(install: TritonInstall, base: Mapping[str, str]) -> dict[str, str]:
    env = MALLOC_TUNING | dict(base)
    if install.library_dirs:
        paths = [str(p) for p in install.library_dirs] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        env["LD_LIBRARY_PATH"] = ":".join(paths)
    # The Python backend's stub imports numpy/onnxruntime from the interpreter found
    # first on PATH: put this interpreter's bin (the venv's) first. No resolve():
    # a venv's python is a symlink and the venv is recognised by its own path.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def server_command(install: TritonInstall, backend_dir: Path, repo: Path, settings: Settings) -> list[str]:
    return [
        str(install.binary),
        f"--model-repository={repo.resolve()}",
        f"--backend-directory={backend_dir.resolve()}",
        f"--http-port={settings.triton_http_port}",
        f"--grpc-port={settings.triton_grpc_port}",
        f"--metrics-port={settings.triton_metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        # Headroom for a 640x640 float32 batch in the Python backend's shared memory.
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=16777216",
        "--log-verbose=0",
    ]


def prepare_server(settings: Settings, repo: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Generate configs for this installation and return (argv, env) to start Triton."""
    repo = repo or settings.triton_repo
    install = find_triton_install()
    write_model_configs(repo, native_onnxruntime=install.native_onnxruntime, settings=settings)
    backend_dir = prepare_backend_dir(install, PROJECT_ROOT / ".triton_backends")
    return server_command(install, backend_dir, repo, settings), server_environment(install, os.environ)


def _process_gone(process: subprocess.Popen | int | None) -> str | None:
    """Why the watched Triton process is no longer running, or None while it runs."""
    if process is None:
        return None
    if isinstance(process, subprocess.Popen):
        return None if process.poll() is None else f"tritonserver exited with code {process.returncode}"
    try:
        state = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return f"tritonserver (pid {process}) exited"
    return f"tritonserver (pid {process}) exited" if state in ("Z", "X") else None


def wait_until_ready(
    url: str, models: Sequence[str], timeout_s: float, process: subprocess.Popen | int | None = None
) -> None:
    """Poll Triton's HTTP readiness for the server and each model.

    Raises InferenceUnavailable on timeout, or at once if the watched `process`
    (a Popen or a pid) exits while starting.
    """
    import tritonclient.http as httpclient  # sync client: used by CLIs and tests, not by the app

    deadline = time.monotonic() + timeout_s
    client = httpclient.InferenceServerClient(url, connection_timeout=2.0, network_timeout=2.0)
    reason = "no answer yet"
    try:
        while time.monotonic() < deadline:
            gone = _process_gone(process)
            if gone:
                raise InferenceUnavailable(f"{gone} while starting")
            try:
                if client.is_server_ready():
                    missing = [m for m in models if not client.is_model_ready(m)]
                    if not missing:
                        return
                    reason = f"models not ready: {', '.join(missing)}"
                else:
                    reason = "server not ready"
            except Exception as error:  # connection refused while it boots
                reason = f"{type(error).__name__}: {error}"
            time.sleep(0.25)
    finally:
        client.close()
    raise InferenceUnavailable(f"Triton at {url} not ready after {timeout_s:.0f} s ({reason})")


# --------------------------------------------------------------------------- the async client
@dataclass(frozen=True)
class ModelBinding:
    """What the pipeline needs to know about one served model, read from Triton."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]  # without batch, -1 dynamic
    input_dtype: str  # Triton's name: "TYPE_UINT8" for installed (folded) models, "TYPE_FP32" for raw ones
    output_names: tuple[str, ...]
    max_batch_size: int
    parameters: Mapping[str, str]


class TritonClient:
    """Asyncio client for the two served models. Every failure becomes `InferenceUnavailable`."""

    # aiohttp asks for gzip by default and Triton then compresses every response.
    _HEADERS = {"Accept-Encoding": "identity"}

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = None
        self._bindings: dict[str, ModelBinding] = {}

    async def open(self) -> None:
        import tritonclient.http.aio as aioclient

        self._client = aioclient.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _call(self, what: str, coroutine):
        if self._client is None:
            raise InferenceUnavailable("Triton client is not open")
        try:
            return await asyncio.wait_for(coroutine, self.timeout_s)
        except TimeoutError as error:
            raise InferenceUnavailable(f"Triton did not answer {what} within {self.timeout_s:g} s") from error
        except Exception as error:  # aiohttp.ClientError, InferenceServerException, OSError
            message = str(error) or type(error).__name__
            raise InferenceUnavailable(f"Triton {what} failed: {message}") from error

    async def readiness(self, models: Sequence[str]) -> str | None:
        """None when the server and every model are ready, else the reason."""
        try:
            if not await self._call("readiness", self._client.is_server_ready(headers=self._HEADERS)):
                return f"Triton at {self.url} is not ready"
            for model in models:
                if not await self._call("readiness", self._client.is_model_ready(model, headers=self._HEADERS)):
                    return f"model {model!r} is not ready"
        except InferenceUnavailable as error:
            return error.message
        return None

    async def binding(self, model: str) -> ModelBinding:
        cached = self._bindings.get(model)
        if cached is not None:
            return cached
        config = await self._call(f"config of {model}", self._client.get_model_config(model, headers=self._HEADERS))
        inputs = config.get("input", [])
        if len(inputs) != 1:
            raise InferenceUnavailable(f"model {model!r} must have exactly one input, has {len(inputs)}")
        binding = ModelBinding(
            name=model,
            input_name=inputs[0]["name"],
            input_shape=tuple(int(d) for d in inputs[0]["dims"]),
            input_dtype=inputs[0].get("data_type", "TYPE_FP32"),
            output_names=tuple(o["name"] for o in config.get("output", [])),
            max_batch_size=max(1, int(config.get("max_batch_size", 1))),
            parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
        )
        self._bindings[model] = binding
        return binding

    async def infer(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run `batch` (N, ...) through `model`, split into Triton-sized chunks; outputs by name."""
        import tritonclient.http.aio as aioclient

        binding = await self.binding(model)
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, batch.shape[0], binding.max_batch_size):
            part = np.ascontiguousarray(batch[start : start + binding.max_batch_size])
            tensor = aioclient.InferInput(binding.input_name, list(part.shape), _triton_dtype(part.dtype))
            tensor.set_data_from_numpy(part, binary_data=True)
            outputs = [aioclient.InferRequestedOutput(n, binary_data=True) for n in binding.output_names]
            begin, outcome = time.perf_counter(), "error"
            try:
                result = await self._call(
                    f"inference on {model}",
                    self._client.infer(model, [tensor], outputs=outputs, headers=dict(self._HEADERS)),
                )
                outcome = "ok"
            finally:
                TRITON_SECONDS.labels(model, outcome).observe(time.perf_counter() - begin)
            chunks.append({n: result.as_numpy(n) for n in binding.output_names})
        if len(chunks) == 1:
            return chunks[0]
        return {n: np.concatenate([c[n] for c in chunks], axis=0) for n in binding.output_names}

    async def config(self, model: str) -> dict:
        """Triton's configuration of `model` (name, backend, tensors, batching, parameters)."""
        return await self._call(f"config of {model}", self._client.get_model_config(model, headers=self._HEADERS))

    async def statistics(self, model: str) -> dict:
        return await self._call("statistics", self._client.get_inference_statistics(model, headers=self._HEADERS))


def _triton_dtype(dtype: np.dtype) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.uint8): "UINT8", np.dtype(np.float16): "FP16"}[np.dtype(dtype)]


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["generate-configs", "serve", "wait-ready"])
    parser.add_argument("--repo", type=Path, help="model repository (default: TRITON_REPO)")
    parser.add_argument("--timeout", type=float, help="wait-ready: seconds (default: TRITON_READY_TIMEOUT_S)")
    parser.add_argument("--watch-pid", type=int, help="wait-ready: fail at once if this process exits")
    args = parser.parse_args(argv)
    settings = Settings()
    repo = args.repo or settings.triton_repo
    try:
        if args.command == "generate-configs":
            install = find_triton_install()
            for path in write_model_configs(repo, native_onnxruntime=install.native_onnxruntime, settings=settings):
                print(f"wrote {path}")
        elif args.command == "serve":
            argv_, env = prepare_server(settings, repo)
            print(f"starting {' '.join(argv_)}", flush=True)
            os.execve(argv_[0], argv_, env)
        else:
            url = settings.triton_url or f"127.0.0.1:{settings.triton_http_port}"
            timeout = args.timeout or settings.triton_ready_timeout_s
            wait_until_ready(url, [DETECTOR, RECOGNIZER], timeout, args.watch_pid)
            print(f"Triton at {url} is ready")
    except (ModelRepositoryError, InferenceUnavailable) as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

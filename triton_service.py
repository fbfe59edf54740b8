"""Everything that touches the Triton server: its process and the async client.

This is the only module that imports `tritonclient`. Two parts (the `config.pbtxt` files
it starts Triton with come from `model_tools/triton_config.py`):

* the server process: find `tritonserver` (PATH, as in NGC images, or the
  `nvidia-pytriton` wheel), prepare its backend directory and environment, start it;
* `TritonClient`: the asyncio HTTP client the pipeline calls for every inference.

CLI: `python triton_service.py {generate-configs,serve,wait-ready} --repo DIR` (`serve` first installs
the anti-spoofing model when ANTISPOOF_FROM names a folder).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from errors import InferenceUnavailable, ModelRepositoryError
from model_tools.triton_config import ANTISPOOF, DETECTOR, RECOGNIZER, write_model_configs  # noqa: F401 (names re-exported to the pipeline)
from settings import PROJECT_ROOT, Settings
from telemetry.metrics import TRITON_SECONDS
from triton_shm import Region, RegionPool, aligned

log = logging.getLogger("frtriton")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

__all__ = ["DETECTOR", "RECOGNIZER", "TritonClient", "prepare_server", "wait_until_ready"]


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


def install_optional_models(settings: Settings, repo: Path) -> dict | None:
    """With ANTISPOOF_FROM set, install the anti-spoofing model into `repo` before Triton starts.

    Every way of starting Triton goes through `serve` (Docker/start.sh, the image, `make triton`,
    the Compose and Kubernetes `triton` services), so the model is installed where the repository
    lives. Idempotent: the same files again change nothing; it stays installed afterwards.
    Raises ModelRepositoryError (with what is wrong) on a bad folder.
    """
    if settings.antispoof_from is None:
        return None
    from model_tools.antispoof_install import install

    entry = install(settings.antispoof_from, repo)
    print(f"anti-spoofing model {entry['name']} installed from ANTISPOOF_FROM={settings.antispoof_from} "
          f"(weights: {entry['licence']})", flush=True)
    return entry


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
def http_address(url: str | None, port: int) -> str:
    """host:port of Triton's HTTP endpoint (tritonclient wants no scheme): `url` (TRITON_URL), else the local one."""
    return (url or f"127.0.0.1:{port}").removeprefix("http://").rstrip("/")


def shared_memory_mode(settings: Settings) -> str:
    """"on", "auto" (try it, fall back to HTTP) or "off": TRITON_SHARED_MEMORY, and never auto for a
    Triton on another host (its /dev/shm is not ours: a remote TRITON_URL keeps the network path)."""
    if settings.triton_shared_memory != "auto":
        return settings.triton_shared_memory
    host = http_address(settings.triton_url, settings.triton_http_port).rsplit(":", 1)[0]
    return "auto" if host in LOCAL_HOSTS else "off"


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
    """Asyncio client for the two served models. Every failure becomes `InferenceUnavailable`.

    `shared_memory` "on"/"auto": tensors travel through system shared memory (`triton_shm`) once
    the output layout of a (model, input shape) is known from a first HTTP call; "auto" turns to
    HTTP for good when Triton cannot map the regions (another host or container). A Triton that
    restarted has forgotten the regions: the call that finds out re-registers them, over HTTP once.
    """

    # aiohttp asks for gzip by default and Triton then compresses every response.
    _HEADERS = {"Accept-Encoding": "identity"}

    def __init__(self, url: str, timeout_s: float, shared_memory: str = "off") -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = None
        self._bindings: dict[str, ModelBinding] = {}
        self.shared_memory = shared_memory
        self._pool = RegionPool() if shared_memory in ("on", "auto") else None
        # (model, input shape, dtype) -> ((output name, numpy dtype, shape), ...), learnt over HTTP
        self._layouts: dict[tuple, tuple[tuple[str, np.dtype, tuple[int, ...]], ...]] = {}

    async def open(self) -> None:
        import tritonclient.http.aio as aioclient

        self._client = aioclient.InferenceServerClient(self.url, conn_timeout=self.timeout_s)

    async def close(self) -> None:
        if self._pool is not None:
            for region in self._pool.regions:
                if region.registered and self._client is not None:
                    # best effort: a Triton that is gone has forgotten them anyway
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._client.unregister_system_shared_memory(
                            region.name, headers=self._HEADERS), self.timeout_s)
            self._pool.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def shared_memory_regions(self) -> tuple[Region, ...]:
        return self._pool.regions if self._pool is not None else ()

    async def _register(self, region: Region) -> bool:
        """Register `region` with Triton if it is not; False (and HTTP from now on) when "auto" cannot."""
        if region.registered:
            return True
        try:
            await self._call("shared memory registration", self._client.register_system_shared_memory(
                region.name, region.key, region.size, headers=self._HEADERS))
        except InferenceUnavailable as error:
            from tritonclient.utils import InferenceServerException

            if "already" in error.message.lower():  # registered before a lost answer: ours, same key
                region.registered = True
                return True
            # Only Triton's own refusal means it cannot map our memory; an unreachable or silent
            # Triton is the usual 503 (and shared memory is tried again once it is back).
            if self.shared_memory == "on" or not isinstance(error.__cause__, InferenceServerException):
                raise
            log.warning("Triton cannot map this process's shared memory (%s): tensors go over HTTP", error.message)
            pool, self._pool = self._pool, None
            if pool is not None:  # a concurrent request may have given up on it first
                pool.close()
            return False
        region.registered = True
        return True

    async def _infer_shared(self, model: str, binding: ModelBinding, part: np.ndarray, layout) -> dict | None:
        """One chunk through shared memory; None to send it over HTTP instead."""
        import tritonclient.http.aio as aioclient

        offsets, end = [], aligned(part.nbytes)
        for _, dtype, shape in layout:
            offsets.append(end)
            end += aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        if self._pool is None:  # given up on by a concurrent request: HTTP from now on
            return None
        region = self._pool.acquire(end)
        try:
            if not await self._register(region):
                return None
            region.write(0, part)
            tensor = aioclient.InferInput(binding.input_name, list(part.shape), _triton_dtype(part.dtype))
            tensor.set_shared_memory(region.name, part.nbytes)
            outputs = []
            for (name, dtype, shape), offset in zip(layout, offsets, strict=True):
                output = aioclient.InferRequestedOutput(name, binary_data=True)
                output.set_shared_memory(region.name, int(np.prod(shape)) * np.dtype(dtype).itemsize, offset=offset)
                outputs.append(output)
            try:
                await self._call(f"inference on {model}", self._client.infer(
                    model, [tensor], outputs=outputs, headers=dict(self._HEADERS)))
            except InferenceUnavailable as error:
                if "shared memory" not in error.message.lower():
                    raise
                # Triton restarted (it forgot every region) or the layout changed: relearn over HTTP.
                log.info("Triton lost the shared-memory regions (%s): registering them again", error.message)
                self._pool.forget_registrations()
                self._layouts.pop((model, part.shape, part.dtype.str), None)
                return None
            return {name: region.read(offset, dtype, shape)
                    for (name, dtype, shape), offset in zip(layout, offsets, strict=True)}
        finally:
            if self._pool is not None:
                self._pool.release(region)

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

    async def serves(self, model: str) -> bool:
        """Whether Triton serves `model` ready (False for one not installed); unreachable Triton raises."""
        return bool(await self._call("readiness", self._client.is_model_ready(model, headers=self._HEADERS)))

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
        binding = await self.binding(model)
        chunks: list[dict[str, np.ndarray]] = []
        for start in range(0, batch.shape[0], binding.max_batch_size):
            part = np.ascontiguousarray(batch[start : start + binding.max_batch_size])
            key = (model, part.shape, part.dtype.str)
            begin, outcome = time.perf_counter(), "error"
            try:
                layout = self._layouts.get(key) if self._pool is not None else None
                found = await self._infer_shared(model, binding, part, layout) if layout else None
                if found is None:
                    found = await self._infer_http(model, binding, part)
                    if self._pool is not None:
                        self._layouts[key] = tuple((n, v.dtype, v.shape) for n, v in found.items())
                outcome = "ok"
            finally:
                TRITON_SECONDS.labels(model, outcome).observe(time.perf_counter() - begin)
            chunks.append(found)
        if len(chunks) == 1:
            return chunks[0]
        return {n: np.concatenate([c[n] for c in chunks], axis=0) for n in binding.output_names}

    async def _infer_http(self, model: str, binding: ModelBinding, part: np.ndarray) -> dict[str, np.ndarray]:
        import tritonclient.http.aio as aioclient

        tensor = aioclient.InferInput(binding.input_name, list(part.shape), _triton_dtype(part.dtype))
        tensor.set_data_from_numpy(part, binary_data=True)
        outputs = [aioclient.InferRequestedOutput(n, binary_data=True) for n in binding.output_names]
        result = await self._call(
            f"inference on {model}", self._client.infer(model, [tensor], outputs=outputs, headers=dict(self._HEADERS))
        )
        return {n: result.as_numpy(n) for n in binding.output_names}

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
            install_optional_models(settings, repo)
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

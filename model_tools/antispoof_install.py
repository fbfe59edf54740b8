"""Install the anti-spoofing model into the Triton model repository (no torch needed for a converted folder).

    python -m model_tools.antispoof_install --from FOLDER [--repo model_repository]

FOLDER is what `python convert_to_onnx.py antispoof --out FOLDER` wrote (`manifest.json` and
`antispoof.onnx`, the served graph holding both MiniFASNets), or a folder of the authors' `*.pth`
checkpoints, converted on the spot (that needs torch: `make` installs it into `.venv`; the Docker
image has none, so mount a converted folder there). The served graph is checked against its
manifest (sha256, tensors) and copied to `<repo>/antispoof/1/model.onnx` atomically; its crop
scales and licence go into `model_info.json`, which the generated config carries to the API.
Installing again the same files changes nothing; the model then stays installed when later runs
come without ANTISPOOF_FROM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from errors import ModelRepositoryError
from model_tools.downloads import sha256_file
from model_tools.triton_config import ANTISPOOF, MODEL_FILENAME, MODEL_INFO, atomic_write, read_onnx_signature

MANIFEST = "manifest.json"
MODEL_VERSION = "1"
SERVED_INPUT_DTYPE = "TYPE_UINT8"


def _load_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelRepositoryError(f"{folder / MANIFEST} is not readable JSON ({error})") from error
    if manifest.get("kind") != "antispoof" or not manifest.get("served"):
        raise ModelRepositoryError(
            f"{folder} holds no served anti-spoofing graph: convert with "
            f"`python convert_to_onnx.py antispoof --from CHECKPOINTS --out {folder}`"
        )
    return manifest


def converted_folder(source: Path, scratch: Path) -> Path:
    """`source` when it is converted already, else its checkpoints converted into `scratch` (needs torch)."""
    if (source / MANIFEST).is_file():
        return source
    if not any(source.glob("*.pth")):
        raise ModelRepositoryError(
            f"ANTISPOOF_FROM={source}: neither a converted folder ({MANIFEST}) nor the authors' *.pth checkpoints"
        )
    try:
        from model_tools.antispoof_export import convert
    except ImportError as error:  # no torch (the Docker image): say what to do instead
        raise ModelRepositoryError(
            f"{source} holds PyTorch checkpoints and converting them needs torch ({error}); convert them "
            "elsewhere with `python convert_to_onnx.py antispoof --from ... --out FOLDER` and use FOLDER"
        ) from error
    convert(source, scratch, served=True, progress=False)
    return scratch


def install(source: Path, repo: Path) -> dict:
    """Install the served graph of `source` (converted or checkpoints) into `repo`; returns its model_info entry."""
    source, repo = Path(source), Path(repo)
    if not source.is_dir():
        raise ModelRepositoryError(f"ANTISPOOF_FROM={source} is not a folder")
    with tempfile.TemporaryDirectory(prefix="antispoof-") as scratch:
        folder = converted_folder(source, Path(scratch))
        manifest = _load_manifest(folder)
        served = manifest["served"]
        graph = folder / served["file"]
        if not graph.is_file() or sha256_file(graph) != served["sha256"]:
            raise ModelRepositoryError(f"{graph} is missing or does not match the sha256 in {folder / MANIFEST}")
        signature = read_onnx_signature(graph)
        if len(signature.inputs) != 1 or signature.inputs[0].dtype != SERVED_INPUT_DTYPE:
            raise ModelRepositoryError(f"{graph}: expected one uint8 input, got {signature.inputs}")
        target = repo / ANTISPOOF / MODEL_VERSION / MODEL_FILENAME
        entry = {
            "name": "+".join(model["network"] for model in manifest["models"]),
            "source_file": served["file"],
            "sha256": served["sha256"],
            "path": str(target.relative_to(repo)),
            "scales": ",".join(f"{scale:g}" for scale in served["scales"]),
            "channel_order": served["input"]["channel_order"],
            "licence": manifest["licence"],
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in signature.inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in signature.outputs],
        }
        info_path = repo / MODEL_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {"models": {}}
        if info["models"].get(ANTISPOOF) == entry and target.is_file() and sha256_file(target) == entry["sha256"]:
            return entry  # already installed: nothing to write
        staged = target.with_name(f".{MODEL_FILENAME}.staged")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(graph, staged)
        staged.replace(target)
        info["models"][ANTISPOOF] = entry
        atomic_write(info_path, json.dumps(info, indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, required=True,
                        help="a converted folder (manifest.json) or the authors' *.pth checkpoints")
    parser.add_argument("--repo", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    try:
        entry = install(args.source, args.repo)
    except ModelRepositoryError as error:
        print(f"antispoof install: {error}", file=sys.stderr)
        return 1
    print(f"installed {entry['name']} (scales {entry['scales']}) as {args.repo / entry['path']} "
          f"(sha256 {entry['sha256'][:12]}…); weights: {entry['licence']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

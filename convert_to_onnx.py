"""Convert an ArcFace PyTorch backbone checkpoint to ONNX, verified, optionally installed.

    python convert_to_onnx.py --arch iresnet50 --weights-path W.pth \\
        --onnx-path model_repository/fr_model/1/model.onnx [--opset 17]

Architectures: iresnet18/34/50/100 (the ArcFace PyTorch family) and mobilefacenet, with
the parameter names of InsightFace's `arcface_torch` training code, so its checkpoints
load as they are. A checkpoint may be a plain state dict, `{"state_dict": ...}` (or
`"model"`, `"backbone"`) and may carry DataParallel's `module.` prefix. A checkpoint that
does not fit the architecture is refused with the list of differences.

The export has a dynamic batch, passes `onnx.checker`, and ONNX Runtime's output on a
random batch of 3 is compared with PyTorch's (max difference printed; above `--atol` is
an error). When `--onnx-path` is the recognizer of a model repository
(`<repo>/fr_model/<v>/model.onnx`), the model is installed there like any other model:
validated, written atomically, recorded in `model_info.json`, configs regenerated.

Anti-spoofing (MiniFASNet, Silent-Face-Anti-Spoofing) has its own subcommand; the logic lives in
`model_tools/antispoof_export.py`:

    python convert_to_onnx.py antispoof --from {FOLDER|upstream} --out FOLDER [--served]

torch is needed here only (requirements-dev.txt pins it); the service never imports this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

EMBEDDING_SIZE = 512
INPUT_SIZE = 112
IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
ARCHITECTURES = (*IRESNET_LAYERS, "mobilefacenet")
BN_EPS = 1e-5


class ConversionError(Exception):
    """A user-facing conversion failure (printed without a traceback)."""


# --------------------------------------------------------------------------- iresnet
def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, conv, BN, PReLU, conv (strided), BN, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """112x112 input -> 4 stages (64..512 channels, stride 2 each) -> 7x7 -> FC -> BN embedding."""

    def __init__(self, layers: tuple[int, int, int, int], embedding_size: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        cin = 64
        for index, (width, blocks) in enumerate(zip(widths, layers, strict=True), start=1):
            stage = [IBasicBlock(cin, width, 2)] + [IBasicBlock(width, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            cin = width
        self.bn2 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# --------------------------------------------------------------------------- mobilefacenet
class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
                 activation: bool = True) -> None:
        super().__init__()
        parts: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if activation:
            parts.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to `hidden`, 3x3 depthwise (strided), 1x1 linear project."""

    def __init__(self, cin: int, cout: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, hidden),
            ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden),
            ConvBlock(hidden, cout, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x) if self.residual else self.layers(x)


class Residual(nn.Module):
    def __init__(self, channels: int, blocks: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(DepthWise(channels, channels, hidden, 1, True) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv instead of pooling, then a linear embedding with BN."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBlock(512, 512, 7, groups=512, activation=False),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """The arcface_torch `mbf` layout (blocks 1, 4, 6, 2; width scale 2), as in w600k_mbf."""

    def __init__(self, embedding_size: int = EMBEDDING_SIZE, blocks=(1, 4, 6, 2), scale: int = 2) -> None:
        super().__init__()
        c64, c128 = 64 * scale, 128 * scale
        first = (
            ConvBlock(c64, c64, 3, 1, 1, groups=64) if blocks[0] == 1 else Residual(c64, blocks[0], 128)
        )
        self.layers = nn.ModuleList([
            ConvBlock(3, c64, 3, 2, 1),
            first,
            DepthWise(c64, c64, 128, 2, False),
            Residual(c64, blocks[1], 128),
            DepthWise(c64, c128, 256, 2, False),
            Residual(c128, blocks[2], 256),
            DepthWise(c128, c128, 512, 2, False),
            Residual(c128, blocks[3], 256),
        ])
        self.conv_sep = ConvBlock(c128, 512)
        self.features = GDC(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def build_backbone(arch: str) -> nn.Module:
    """A randomly initialised backbone of `arch` (one of ARCHITECTURES), 512-d embeddings."""
    if arch in IRESNET_LAYERS:
        return IResNet(IRESNET_LAYERS[arch])
    if arch == "mobilefacenet":
        return MobileFaceNet()
    raise ConversionError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


# --------------------------------------------------------------------------- checkpoints
def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: plain, {"state_dict"|"model"|"backbone": ...}, `module.`-prefixed."""
    if not path.is_file():
        raise ConversionError(f"{path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors of every kind
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint ({error})") from error
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model", "backbone"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(f"{path} holds no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _modules(keys: list[str]) -> list[str]:
    """Parameter names grouped by their module: `layer1.2.bn1.weight` -> `layer1.2.bn1`."""
    return list(dict.fromkeys(key.rsplit(".", 1)[0] for key in keys))


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    """Load `state` strictly; on any difference raise a ConversionError listing them."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs {arch} {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"the checkpoint does not fit {arch}:"]
        for title, items in (("missing", _modules(missing)), ("unexpected", _modules(unexpected)),
                             ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
                lines.append(f"  {title} ({len(items)}): {shown}")
        raise ConversionError("\n".join(lines))
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- export and check
def export(model: nn.Module, path: Path, opset: int) -> None:
    model.eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (dummy,), str(path), input_names=["input.1"], output_names=["embedding"],
            dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


def max_difference(model: nn.Module, path: Path, batch: int = 3, seed: int = 0) -> float:
    """Largest |ONNX Runtime - PyTorch| over a random batch."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sample = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (batch, 3, INPUT_SIZE, INPUT_SIZE)))
    sample = sample.float()
    with torch.no_grad():
        expected = model.eval()(sample).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"input.1": sample.numpy()})[0]
    if actual.shape != expected.shape:
        raise ConversionError(f"ONNX output shape {actual.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(actual - expected).max())


def repository_of(onnx_path: Path) -> Path | None:
    """The model repository when `onnx_path` is `<repo>/fr_model/<version>/model.onnx`."""
    from model_tools.triton_config import MODEL_FILENAME, MODEL_INFO, RECOGNIZER

    resolved = onnx_path.resolve()
    repo = resolved.parent.parent.parent
    if resolved.name == MODEL_FILENAME and resolved.parent.parent.name == RECOGNIZER and (repo / MODEL_INFO).is_file():
        return repo
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["antispoof"]:
        from model_tools.antispoof_export import main as antispoof_main

        return antispoof_main(argv[1:])
    parser = argparse.ArgumentParser(
        description="Convert an ArcFace PyTorch checkpoint to ONNX (or: convert_to_onnx.py antispoof --help)."
    )
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    parser.add_argument("--weights-path", type=Path, required=True)
    parser.add_argument("--onnx-path", type=Path, required=True)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--atol", type=float, default=1e-3, help="largest accepted |ONNX - PyTorch|")
    args = parser.parse_args(argv)
    try:
        model = build_backbone(args.arch)
        apply_weights(model, load_state_dict(args.weights_path), args.arch)
        with tempfile.TemporaryDirectory() as scratch:
            exported = Path(scratch) / "model.onnx"
            export(model, exported, args.opset)
            difference = max_difference(model, exported)
            print(f"max |ONNX Runtime - PyTorch| on a random batch of 3: {difference:.3g}")
            if difference > args.atol:
                raise ConversionError(f"the ONNX model differs from PyTorch by {difference:.3g} > {args.atol}")
            install_into_repository(exported, args)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def install_into_repository(exported: Path, args: argparse.Namespace) -> None:
    from errors import ModelRepositoryError
    from extract_insightface_models import install_recognizer
    from model_tools.triton_config import atomic_write

    repo = repository_of(args.onnx_path)
    if repo is None:
        atomic_write(args.onnx_path, exported.read_bytes())
        print(f"wrote {args.onnx_path} (opset {args.opset}, dynamic batch)")
        return
    try:
        install_recognizer(exported.read_bytes(), f"{args.arch} ({args.weights_path.name})", repo)
    except ModelRepositoryError as error:
        raise ConversionError(error.message) from error
    print(f"installed {args.arch} as the recognizer of {repo} (model_info.json and config.pbtxt updated)")


if __name__ == "__main__":
    sys.exit(main())

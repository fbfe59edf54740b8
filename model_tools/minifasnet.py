"""MiniFASNet anti-spoofing classifiers (Silent-Face-Anti-Spoofing, Minivision, Apache-2.0) in PyTorch.

An independent implementation of the two networks the authors publish weights for,
MiniFASNetV2 and MiniFASNetV1SE, with the parameter names of their checkpoints so the state
dicts load strictly. Both take one face crop as OpenCV gives it: BGR, float32 0-255 (not
normalised), NCHW (N, 3, 80, 80); both return (N, 3) logits whose softmax class 1 is "real"
(0 and 2 are attack types).

Shape of the network (80x80 input): a stride-2 3x3 stem (40x40), a depthwise 3x3, then three
inverted-bottleneck stages each entered by a stride-2 bottleneck (20x20, 10x10, 5x5), a 1x1
conv to 512 channels, a 5x5 depthwise "global" conv to 1x1, a linear 512 -> 128 embedding
with BatchNorm, and a linear 128 -> 3 classifier. The SE variant ends every residual stage with
a squeeze-excitation block. V2 and V1SE differ in their bottleneck widths (`CHANNEL_PLANS`).

Also here: the checkpoint file-name convention (`2.7_80x80_MiniFASNetV2.pth`), the pinned
upstream files, and `TorchReference`, the PyTorch scorer integration tests compare against.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 3
REAL_CLASS = 1
# The authors name only class 1; 0 and 2 are two kinds of presentation attack.
CLASS_ORDER = ("attack_0", "real", "attack_2")
EMBEDDING_SIZE = 128
HEAD_CHANNELS = 512
SE_REDUCTION = 4  # squeeze-excitation bottleneck: channels // 4
DATAPARALLEL_PREFIX = "module."

UPSTREAM_REPOSITORY = "https://github.com/minivision-ai/Silent-Face-Anti-Spoofing"
UPSTREAM_COMMIT = "b6d5f04ad78778917853b25c778acef6d5626d15"
UPSTREAM_FOLDER = "resources/anti_spoof_models"
UPSTREAM_BASE_URL = f"{UPSTREAM_REPOSITORY}/raw/{UPSTREAM_COMMIT}/{UPSTREAM_FOLDER}/"


class AntiSpoofError(Exception):
    """A user-facing failure (bad checkpoint, failed check, refused download): printed without a traceback."""


@dataclass(frozen=True)
class UpstreamFile:
    filename: str
    sha256: str
    size: int

    @property
    def url(self) -> str:
        return UPSTREAM_BASE_URL + self.filename


UPSTREAM_FILES = (
    UpstreamFile(
        "2.7_80x80_MiniFASNetV2.pth", "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0", 1849453
    ),
    UpstreamFile(
        "4_0_0_80x80_MiniFASNetV1SE.pth", "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990", 1856130
    ),
)
PINNED_SHA256 = frozenset(item.sha256 for item in UPSTREAM_FILES)


# --------------------------------------------------------------------------- channel plans
@dataclass(frozen=True)
class ChannelPlan:
    """Widths of one MiniFASNet: stem, then per stage (entry bottleneck hidden -> out, residual hiddens)."""

    stem: int
    entries: tuple[tuple[int, int], ...]  # (hidden, out) of the stride-2 bottleneck opening each stage
    residual_hidden: tuple[tuple[int, ...], ...]  # hidden width of each residual block, per stage


# The authors' pruned plans "1.8M" (V1, V1SE) and "1.8M_" (V2): the same skeleton with different
# bottleneck widths. Read off their checkpoints, which load strictly only with these numbers.
CHANNEL_PLANS = {
    "1.8M": ChannelPlan(
        stem=32,
        entries=((103, 64), (231, 128), (308, 128)),
        residual_hidden=((13, 26, 13, 52), (154, 52, 26, 52, 26, 26), (26, 26)),
    ),
    "1.8M_": ChannelPlan(
        stem=32,
        entries=((103, 64), (231, 128), (308, 128)),
        residual_hidden=((13, 13, 13, 13), (231, 52, 26, 77, 26, 26), (26, 26)),
    ),
}
NETWORKS = {"MiniFASNetV2": ("1.8M_", False), "MiniFASNetV1SE": ("1.8M", True)}  # name -> (plan, SE)


def head_kernel(height: int, width: int) -> tuple[int, int]:
    """Kernel of the final depthwise conv: the feature map after four stride-2 steps, (5, 5) for 80x80."""
    return (height + 15) // 16, (width + 15) // 16


# --------------------------------------------------------------------------- layers
class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm, optionally + PReLU. Attribute names match the checkpoints."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int] = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, prelu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if prelu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SqueezeExcite(nn.Module):
    """Channel gate: global average -> 1x1 conv down -> BN -> ReLU -> 1x1 conv up -> BN -> sigmoid, times x."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.relu(self.bn1(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(self.bn2(self.fc2(gate)))


class Bottleneck(nn.Module):
    """Inverted bottleneck: 1x1 expand (PReLU), 3x3 depthwise (PReLU, maybe strided), 1x1 linear project.

    A residual block adds its input back; with `se` its projection first passes a squeeze-excitation gate.
    """

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, residual: bool, se: bool = False) -> None:
        super().__init__()
        self.conv = ConvBN(cin, hidden)
        self.conv_dw = ConvBN(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = ConvBN(hidden, cout, prelu=False)
        self.residual = residual
        self.se_module = SqueezeExcite(cout) if se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        if not self.residual:
            return out
        if self.se_module is not None:
            out = self.se_module(out)
        return x + out


class ResidualStage(nn.Module):
    """Residual bottlenecks at a constant width; with `se` the last one has the SE gate."""

    def __init__(self, channels: int, hiddens: Sequence[int], se: bool) -> None:
        super().__init__()
        last = len(hiddens) - 1
        self.model = nn.Sequential(*(
            Bottleneck(channels, hidden, channels, 1, True, se=se and index == last)
            for index, hidden in enumerate(hiddens)
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """(N, 3, H, W) BGR 0-255 -> (N, NUM_CLASSES) logits. Inference only: the authors' dropout is left out."""

    def __init__(self, plan: ChannelPlan, se: bool, kernel: tuple[int, int] = (5, 5),
                 num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        stem = plan.stem
        self.conv1 = ConvBN(3, stem, 3, 2, 1)
        self.conv2_dw = ConvBN(stem, stem, 3, 1, 1, groups=stem)
        # Stage names are the checkpoints': conv_23 / conv_3, conv_34 / conv_4, conv_45 / conv_5.
        cin = stem
        names = (("conv_23", "conv_3"), ("conv_34", "conv_4"), ("conv_45", "conv_5"))
        for (entry_name, stage_name), (hidden, cout), hiddens in zip(
            names, plan.entries, plan.residual_hidden, strict=True
        ):
            setattr(self, entry_name, Bottleneck(cin, hidden, cout, 2, residual=False))
            setattr(self, stage_name, ResidualStage(cout, hiddens, se))
            cin = cout
        self.conv_6_sep = ConvBN(cin, HEAD_CHANNELS)
        self.conv_6_dw = ConvBN(HEAD_CHANNELS, HEAD_CHANNELS, kernel, groups=HEAD_CHANNELS, prelu=False)
        self.linear = nn.Linear(HEAD_CHANNELS, EMBEDDING_SIZE, bias=False)
        self.bn = nn.BatchNorm1d(EMBEDDING_SIZE)
        self.prob = nn.Linear(EMBEDDING_SIZE, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = torch.flatten(self.conv_6_dw(self.conv_6_sep(x)), 1)
        return self.prob(self.bn(self.linear(x)))


def build_network(network: str, height: int = 80, width: int = 80) -> MiniFASNet:
    """A randomly initialised `network` ("MiniFASNetV2" or "MiniFASNetV1SE") for HxW crops."""
    if network not in NETWORKS:
        raise AntiSpoofError(f"unsupported network {network!r}; supported: {', '.join(NETWORKS)}")
    plan, se = NETWORKS[network]
    return MiniFASNet(CHANNEL_PLANS[plan], se, head_kernel(height, width))


# --------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's file name says: `2.7_80x80_MiniFASNetV2.pth`, `4_0_0_80x80_MiniFASNetV1SE.pth`."""

    scale: float | None  # crop scale around the face box; None for "org" (whole image, no crop)
    height: int
    width: int
    network: str


# <scale>[_<shift>...]_<H>x<W>_<network>.pth; the authors read the scale from the first field only
# (4_0_0 = scale 4, shifts 0, 0) and call a first field "org" an uncropped model.
_NAME = re.compile(r"^(?P<scale>org|\d+(?:\.\d+)?)(?:_[-\d.]+)*_(?P<h>\d+)x(?P<w>\d+)_(?P<net>[A-Za-z0-9]+)\.pth$")


def parse_checkpoint_name(name: str) -> CheckpointName:
    """Scale, input size and network from a checkpoint file name; AntiSpoofError if it does not fit."""
    match = _NAME.match(Path(name).name)
    if match is None:
        raise AntiSpoofError(f"{name!r} is not named <scale>_<H>x<W>_<network>.pth (e.g. 2.7_80x80_MiniFASNetV2.pth)")
    scale = None if match["scale"] == "org" else float(match["scale"])
    return CheckpointName(scale, int(match["h"]), int(match["w"]), match["net"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint with any DataParallel `module.` prefix removed.

    The authors' files are legacy (non-zip) `torch.save` pickles of a plain OrderedDict;
    `weights_only=True` reads them without running arbitrary pickle code. Only a file whose
    sha256 is one of the pinned upstream files may fall back to a full unpickle (older torch).
    """
    path = Path(path)
    if not path.is_file():
        raise AntiSpoofError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only refusals of every kind
        if _sha256(path) not in PINNED_SHA256:
            raise AntiSpoofError(f"{path} is not a readable weights-only PyTorch checkpoint ({error})") from error
        state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AntiSpoofError(f"{path} holds no state dict of tensors")
    return {key.removeprefix(DATAPARALLEL_PREFIX): value for key, value in state.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)`, with the differences listed in an AntiSpoofError instead of a traceback."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{title} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise AntiSpoofError(f"the checkpoint does not fit {what}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: Path) -> tuple[MiniFASNet, CheckpointName]:
    """The network a checkpoint file names, with its weights loaded strictly, in eval mode."""
    path = Path(path)
    name = parse_checkpoint_name(path.name)
    if name.scale is None:
        raise AntiSpoofError(f"{path.name}: uncropped ('org') models are not supported")
    model = build_network(name.network, name.height, name.width)
    load_strict(model, read_state_dict(path), f"{name.network} ({path.name})")
    return model.eval(), name


def checkpoints_in(folder: Path) -> list[Path]:
    """The `*.pth` files of `folder` in a fixed order (by name): the order of the fused models."""
    found = sorted(Path(folder).glob("*.pth"))
    if not found:
        raise AntiSpoofError(f"no *.pth checkpoints in {folder}")
    return found


# --------------------------------------------------------------------------- reference scorer
class TorchReference:
    """The authors' pipeline in PyTorch: crop each face at each model's scale, softmax, fuse.

    `real_scores(image_bgr, boxes_xyxy)`: image (H, W, 3) uint8 **BGR** (flip the service's RGB
    decode with `image[..., ::-1]`), boxes (N, 4) detector x1, y1, x2, y2 -> (N,) real scores.
    """

    def __init__(self, checkpoints: Sequence[Path]) -> None:
        self.models = [load_checkpoint(path) for path in checkpoints]

    @classmethod
    def from_folder(cls, folder: Path) -> TorchReference:
        return cls(checkpoints_in(folder))

    def probabilities(self, image_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(M models, N faces, NUM_CLASSES) softmax probabilities."""
        from vision.antispoof import liveness_crops

        boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        out = np.zeros((len(self.models), len(boxes), NUM_CLASSES), np.float32)
        if not len(boxes):
            return out
        for index, (model, name) in enumerate(self.models):
            [crops] = liveness_crops(image_bgr, boxes, [name.scale], (name.height, name.width))
            batch = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32))  # NHWC uint8 -> NCHW
            with torch.no_grad():
                out[index] = torch.softmax(model(batch), dim=1).numpy()
        return out

    def real_scores(self, image_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N,) mean over models of P(real)."""
        from vision.antispoof import real_scores

        return real_scores(self.probabilities(image_bgr, boxes_xyxy))

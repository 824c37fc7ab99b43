"""The HDME-Net family: HRNet-style networks regressing σ/10 per pixel, variants in one table.

Every variant takes RGB float in [0, 1], shape [B, 3, H, W] with any H, W (reflect-padded to the
network's multiple inside, cropped back), normalises it itself, and returns σ/10 as [B, 1, H, W],
clamped to [0, 1] outside training. Reflect padding needs each side above half the multiple
(8 for hdme-paper, 32 for hdme-w18 and hdme-edge): any image of 32×32 or more works.

- ``hdme-paper``: the authors' network (HRNet-W48 with a stride-1 stem, so branch 0 is at full
  resolution; Bottleneck layer1; stages 2–4 with 1/4/3 modules of 4 BasicBlocks per branch; the
  last module fuses into branch 0 only; a 1×1 head).
- ``hdme-w18``, ``hdme-edge``, ``hdme-tiny``: a stride-2 or stride-4 stem and a deep low-resolution
  branch for the receptive field (blur of flat regions is inferred from distant edges), then a light
  upsampling head that concatenates thin full-resolution (and half-resolution) features of the
  input, so edges are localised at full resolution.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdme.errors import HdmeError
from hdme.train.blocks import GlobalContext, HRModule, Transition, conv_bn, residual_stack, upsample

# The paper normalises BGR input with these; stored here in RGB order.
RGB_MEAN = (0.47678594, 0.44235793, 0.39989262)
RGB_STD = (0.17731254, 0.17431373, 0.17378885)

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "hdme-paper": {
        "stem_stride": 1,
        "stem_width": 64,
        "layer1": {"block": "bottleneck", "blocks": 4, "planes": 64},
        "stages": [
            {"modules": 1, "blocks": 4, "widths": [48, 96]},
            {"modules": 4, "blocks": 4, "widths": [48, 96, 192]},
            {"modules": 3, "blocks": 4, "widths": [48, 96, 192, 384]},
        ],
        "fuse_upsample": "nearest",
        "head": {"skips": {}, "widths": []},
    },
    "hdme-w18": {
        "stem_stride": 2,
        "stem_width": 32,
        "layer1": {"block": "basic", "blocks": 2, "planes": 32},
        "stages": [
            {"modules": 1, "blocks": 2, "widths": [18, 36]},
            {"modules": 2, "blocks": 2, "widths": [18, 36, 72]},
            {"modules": 1, "blocks": 2, "widths": [18, 36, 72, 144]},
            {"modules": 1, "blocks": 2, "widths": [18, 36, 72, 144, 288]},
        ],
        "fuse_upsample": "bilinear",
        "head": {"skips": {"1": 16}, "widths": [24]},
    },
    "hdme-edge": {
        "stem_stride": 4,
        "stem_width": 16,
        "layer1": {"block": "basic", "blocks": 1, "planes": 16},
        # Wide low-resolution branches cost little (1/16, 1/32) and carry the context.
        "stages": [
            {"modules": 1, "blocks": 1, "widths": [16, 32]},
            {"modules": 1, "blocks": 1, "widths": [16, 32, 96]},
            {"modules": 1, "blocks": 2, "widths": [16, 32, 96, 192]},
        ],
        "fuse_upsample": "bilinear",
        "head": {"skips": {"1": 8, "2": 16}, "widths": [16, 8]},
    },
    "hdme-tiny": {
        "stem_stride": 4,
        "stem_width": 8,
        "layer1": {"block": "basic", "blocks": 1, "planes": 8},
        "stages": [{"modules": 1, "blocks": 1, "widths": [8, 16]}],
        "fuse_upsample": "bilinear",
        "head": {"skips": {"1": 4, "2": 8}, "widths": [8, 6]},
    },
}


# Config keys a variant may leave out (older model cards have none of them).
OPTIONAL_KEYS = {"global_context"}  # width of the GlobalContext bottleneck; 0 or absent = none


class HDMENet(nn.Module):
    def __init__(self, name: str, config: dict[str, Any]):
        super().__init__()
        self.name = name
        self.config = copy.deepcopy(config)
        stride = int(config["stem_stride"])
        if stride not in (1, 2, 4):
            raise ValueError(f"stem_stride must be 1, 2 or 4, not {stride}")
        mode = config["fuse_upsample"]
        self.stem_stride = stride
        self.multiple = stride * 2 ** (len(config["stages"][-1]["widths"]) - 1)
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)

        sw = config["stem_width"]
        self.stem1 = conv_bn(3, sw, 3, stride=2 if stride >= 2 else 1)
        self.stem2 = conv_bn(sw, sw, 3, stride=2 if stride >= 4 else 1)
        l1 = config["layer1"]
        self.layer1, width = residual_stack(l1["block"], sw, l1["planes"], l1["blocks"])

        widths = [width]
        transitions, stages = [], []
        for k, stage in enumerate(config["stages"]):
            transitions.append(Transition(widths, stage["widths"]))
            widths = list(stage["widths"])
            last_stage = k == len(config["stages"]) - 1
            modules = []
            for m in range(stage["modules"]):
                outputs = 1 if last_stage and m == stage["modules"] - 1 else len(widths)
                modules.append(HRModule("basic", widths, stage["blocks"], outputs, mode))
            stages.append(nn.Sequential(*modules))
        self.transitions = nn.ModuleList(transitions)
        self.stages = nn.ModuleList(stages)
        # Enters the last stage on its lowest-resolution branch, whose exchange spreads it upward.
        hidden = int(config.get("global_context", 0))
        self.context = GlobalContext(widths[-1], hidden) if hidden > 0 else None

        # Upsampling head: from 1/stride back to full resolution one octave at a time, each
        # step concatenating thin features of the input at that resolution (``skips`` maps the
        # downsampling factor to a width: "1" computed from the input, "2" is the first stem conv).
        head = config["head"]
        skips = {int(k): int(v) for k, v in head["skips"].items()}
        levels = [stride // 2**i for i in range(1, int(math.log2(stride)) + 1)]  # e.g. [2, 1]
        if len(head["widths"]) != len(levels) or set(skips) - set(levels):
            raise ValueError(f"head widths {head['widths']} / skips {sorted(skips)} do not fit stem stride {stride}")
        if 2 in skips and skips[2] != sw:
            raise ValueError("the half-resolution skip is the first stem conv: its width must equal stem_width")
        self.full_res = (
            nn.Sequential(conv_bn(3, skips[1], 3), conv_bn(skips[1], skips[1], 3)) if 1 in skips else None
        )
        self.head_levels = levels
        self.head_skips = skips
        self.up = nn.ModuleList()
        cin = widths[0]
        for level, cout in zip(levels, head["widths"]):
            self.up.append(conv_bn(cin + skips.get(level, 0), cout, 3))
            cin = cout
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        pad_h = (self.multiple - h % self.multiple) % self.multiple
        pad_w = (self.multiple - w % self.multiple) % self.multiple
        x = F.pad(image, (0, pad_w, 0, pad_h), mode="reflect")
        x = (x - self.mean) / self.std

        early = self.stem1(x)  # at 1/2 when the stem downsamples: the head's half-resolution skip
        feats = [self.layer1(self.stem2(early))]
        last = len(self.stages) - 1
        for k, (transition, stage) in enumerate(zip(self.transitions, self.stages)):
            feats = transition(feats)
            if k == last and self.context is not None:
                feats[-1] = self.context(feats[-1])
            feats = stage(feats)
        y = feats[0]

        for level, conv in zip(self.head_levels, self.up):
            y = upsample(y, 2, "bilinear")
            if level == 2 and 2 in self.head_skips:
                y = torch.cat([y, early], dim=1)
            elif level == 1 and self.full_res is not None:
                y = torch.cat([y, self.full_res(x)], dim=1)
            y = conv(y)
        y = self.out(y)[:, :, :h, :w]
        if not self.training:
            y = y.clamp(0.0, 1.0)
        return y


def create_model(name: str, **overrides: Any) -> HDMENet:
    """A fresh (randomly initialised) variant of the table, with config keys overridden."""
    if name not in MODEL_CONFIGS:
        raise HdmeError(f"unknown model '{name}' (known: {', '.join(MODEL_CONFIGS)})")
    config = copy.deepcopy(MODEL_CONFIGS[name])
    unknown = set(overrides) - set(config) - OPTIONAL_KEYS
    if unknown:
        raise HdmeError(f"unknown config keys for {name}: {', '.join(sorted(unknown))}")
    config.update(copy.deepcopy(overrides))
    return HDMENet(name, config)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """FLOPs (2 × multiply-accumulates of Conv2d and Linear layers) of one image of H×W."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs += output.numel() // output.shape[0] * k
        else:
            macs += output.numel() // output.shape[0] * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return 2 * macs


def save_model(model: HDMENet, path: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Write the weights as safetensors and a JSON model card with the same stem beside them."""
    from safetensors.torch import save_file

    from hdme import __version__
    from hdme.io import atomic_path, write_json

    model = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    path = Path(path)
    if path.suffix != ".safetensors":
        raise HdmeError(f"{path}: weights are saved as .safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"model": model.name})
    full_card = {"model": model.name, "config": model.config, "hdme_version": __version__}
    full_card.update(card or {})
    write_json(path.with_suffix(".json"), full_card)
    return path


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise HdmeError(f"{path}: not a readable safetensors file ({exc})") from None


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """A shipped model name or a .safetensors path → the .safetensors file."""
    from hdme.weights import find_weights

    path = Path(name_or_path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise HdmeError(f"{path}: no such weights file")
        return path
    if path.suffix:
        raise HdmeError(f"{path}: not network weights (a .safetensors file or a shipped model name)")
    files = find_weights(str(name_or_path))
    if "safetensors" not in files:
        raise HdmeError(f"shipped model '{name_or_path}' has no safetensors weights")
    return files["safetensors"]


# A residual block of an HRModule branch: stages.<stage>.<module>.branches.<branch>.<block>
_BRANCH_BLOCK = re.compile(r"^(stages\.\d+\.\d+\.branches\.\d+\.(\d+))\.")


def load_init_state(model: HDMENet, path: str | os.PathLike) -> list[str]:
    """Warm-start ``model`` from weights of the same architecture, or of one without parts that
    start as the identity: a GlobalContext, or residual blocks appended to the branches of a stage
    (a deeper variant grown from trained weights). Returns the module names of such parts left at their start."""
    try:
        missing, unexpected = model.load_state_dict(load_state(path), strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise HdmeError(f"{path}: weights do not fit {model.name} ({str(exc).splitlines()[-1].strip()})") from None
    missing_set = set(missing)

    def wholly_missing(name: str) -> bool:  # a partly loaded block is a mismatch; BatchNorm loads without its counter
        return all(f"{name}.{key}" in missing_set for key in model.get_submodule(name).state_dict()
                   if not key.endswith("num_batches_tracked"))

    # Only blocks behind the first of their branch: a missing first block means the weights lack the
    # whole branch, which stays among the leftovers as a mismatch.
    behind_first = {m.group(1) for k in missing if (m := _BRANCH_BLOCK.match(k)) and int(m.group(2)) > 0}
    added = {name: model.get_submodule(name) for name in sorted(behind_first) if wholly_missing(name)}
    leftover = [k for k in missing if not (m := _BRANCH_BLOCK.match(k)) or m.group(1) not in added]
    fresh = sorted({k.split(".")[0] for k in leftover})
    if unexpected or set(fresh) - {"context"}:
        keys = unexpected or leftover
        raise HdmeError(f"{path}: weights do not fit {model.name} ({len(keys)} keys such as '{keys[0]}')")
    for block in added.values():
        block.start_as_identity()
    return fresh + list(added)


def load_model(name_or_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> HDMENet:
    """A shipped model by name or a .safetensors file, rebuilt from its card, in eval mode."""
    path = resolve_weights(name_or_path)
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise HdmeError(f"{path}: the model card {card_path.name} is missing; it names the architecture")
    try:
        card = json.loads(card_path.read_text())
        model = HDMENet(card["model"], card["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise HdmeError(f"{card_path}: not a valid model card ({exc})") from None
    state = load_state(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise HdmeError(f"{path}: weights do not match the architecture in its card ({str(exc).splitlines()[0]})") from None
    return model.to(map_location).eval()

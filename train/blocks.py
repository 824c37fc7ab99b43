"""HRNet building blocks: residual blocks, multi-resolution modules with sum fusion, transitions.

Only plain operators (Conv, BatchNorm, ReLU, Resize, Add, Concat, ReduceMean) so that the networks export to
ONNX, fold BatchNorm and quantise to INT8 without special handling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn(cin, planes, 3)
        self.conv2 = conv_bn(planes, cout, 3, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, relu=False) if cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))

    def start_as_identity(self) -> None:
        start_as_identity(self, self.conv2)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn(cin, planes, 1)
        self.conv2 = conv_bn(planes, planes, 3)
        self.conv3 = conv_bn(planes, cout, 1, relu=False)
        self.shortcut = conv_bn(cin, cout, 1, relu=False) if cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))

    def start_as_identity(self) -> None:
        start_as_identity(self, self.conv3)


def start_as_identity(block: nn.Module, last: nn.Sequential) -> None:
    """Zero the scale of a residual block's last BatchNorm: with an identity shortcut and an input
    that is itself a ReLU's output (as every block's input in these networks is), the block then
    passes its input through unchanged until trained, so it can be added to trained weights."""
    if not isinstance(block.shortcut, nn.Identity):
        raise ValueError("only a block with an identity shortcut can start as the identity")
    nn.init.zeros_(last[1].weight)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def residual_stack(block: str, cin: int, planes: int, count: int) -> tuple[nn.Sequential, int]:
    """``count`` residual blocks; returns the stack and its output width."""
    cls = BLOCKS[block]
    layers = []
    for _ in range(count):
        layers.append(cls(cin, planes))
        cin = planes * cls.expansion
    return nn.Sequential(*layers), cin


def upsample(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    # Sizes are exact multiples after the model's padding, so a scale factor is enough and
    # exports to one ONNX Resize.
    if mode == "nearest":
        return F.interpolate(x, scale_factor=float(factor), mode="nearest")
    return F.interpolate(x, scale_factor=float(factor), mode=mode, align_corners=False)


class Upsample(nn.Module):
    def __init__(self, factor: int, mode: str):
        super().__init__()
        self.factor = factor
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(x, self.factor, self.mode)


def fuse_path(cin: int, cout: int, src: int, dst: int, mode: str) -> nn.Module:
    """Carry branch ``src`` to the resolution and width of branch ``dst`` (branch k is at 1/2^k)."""
    if src == dst:
        return nn.Identity()
    if src > dst:
        return nn.Sequential(conv_bn(cin, cout, 1, relu=False), Upsample(2 ** (src - dst), mode))
    steps = []
    for k in range(dst - src):
        last = k == dst - src - 1
        steps.append(conv_bn(cin, cout if last else cin, 3, stride=2, relu=not last))
    return nn.Sequential(*steps)


class HRModule(nn.Module):
    """Parallel residual branches followed by an exchange: every output branch is the ReLU of the
    sum of all input branches resampled to its resolution. With ``outputs=1`` only the
    highest-resolution branch is produced (HRNet's last module)."""

    def __init__(self, block: str, widths: list[int], blocks: int, outputs: int, mode: str):
        super().__init__()
        expansion = BLOCKS[block].expansion
        self.branches = nn.ModuleList(residual_stack(block, w, w // expansion, blocks)[0] for w in widths)
        self.fuse = nn.ModuleList(
            nn.ModuleList(fuse_path(widths[j], widths[i], j, i, mode) for j in range(len(widths)))
            for i in range(outputs)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for paths in self.fuse:
            total = paths[0](xs[0])
            for path, x in zip(paths[1:], xs[1:]):
                total = total + path(x)
            out.append(self.relu(total))
        return out


class Transition(nn.Module):
    """Adapt the widths of existing branches and open at most one new, half-resolution branch
    (3×3 stride 2 from the lowest-resolution branch so far), as HRNet does between stages."""

    def __init__(self, cins: list[int], couts: list[int]):
        super().__init__()
        if not len(cins) <= len(couts) <= len(cins) + 1:
            raise ValueError(f"a transition adds at most one branch: {cins} -> {couts}")
        self.paths = nn.ModuleList(conv_bn(cin, cout, 3) if cin != cout else nn.Identity() for cin, cout in zip(cins, couts))
        self.new_branch = conv_bn(cins[-1], couts[-1], 3, stride=2) if len(couts) > len(cins) else None

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [path(x) for path, x in zip(self.paths, xs)]
        if self.new_branch is not None:
            out.append(self.new_branch(xs[-1]))
        return out


class GlobalContext(nn.Module):
    """Adds a summary of the whole image to every position of a branch: the mean of its features
    through a small bottleneck. A flat region's blur cannot be seen locally; whether the photo as a
    whole has a blurred background is evidence the convolutions' receptive field cannot reach.

    The last layer starts at zero, so the block is the identity until trained and can be added to
    trained weights without changing their predictions."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.reduce = nn.Conv2d(width, hidden, 1)
        self.expand = nn.Conv2d(hidden, width, 1)
        nn.init.zeros_(self.expand.weight)
        nn.init.zeros_(self.expand.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.expand(F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True))))

"""Histogram-invariant spatial aliasing sampling: permute pixel positions, keep every RGB triplet.

The colour histogram is unchanged and neighbouring pixels become independent, so the result is
all-in-focus by construction from any source image.
"""

from __future__ import annotations

import torch

SHUFFLE_MODES = ("full", "rowcol")


def _random_permutations(rows: int, length: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    keys = torch.rand(rows, length, generator=generator, device=gen_device)
    return torch.argsort(keys, dim=1).to(device)


def shuffle_pixels(img: torch.Tensor, mode: str = "full", generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle pixel positions of ``img`` ([3,H,W] or [B,3,H,W]); each sample gets its own permutation.

    ``full`` permutes all H·W positions (the paper); ``rowcol`` permutes rows, then columns
    (the authors' repository), which keeps row/column structure.
    """
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
    single = img.dim() == 3
    x = img.unsqueeze(0) if single else img
    b, c, h, w = x.shape
    if mode == "full":
        perm = _random_permutations(b, h * w, generator, x.device)
        out = torch.gather(x.reshape(b, c, h * w), 2, perm[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)
    else:
        rows = _random_permutations(b, h, generator, x.device)
        cols = _random_permutations(b, w, generator, x.device)
        out = torch.gather(x, 2, rows[:, None, :, None].expand(b, c, h, w))
        out = torch.gather(out, 3, cols[:, None, None, :].expand(b, c, h, w))
    return out[0] if single else out

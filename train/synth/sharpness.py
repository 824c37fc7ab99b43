"""Eq. 6: the variance of the Laplacian of the grey image, with OpenCV's numbers.

OpenCV converts RGB→grey in 15-bit fixed point and filters with the 4-neighbour Laplacian
(ksize=1) and BORDER_REFLECT_101; doing the same here makes values comparable with the paper's
Table 1 and with ``cv2.Laplacian(gray, cv2.CV_64F).var()``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SHARP_THRESHOLD = 1000.0  # the paper's bar for an all-in-focus image
_GREY_WEIGHTS = (9798, 19235, 3735)  # OpenCV's 15-bit fixed-point RGB→grey weights (sum 2**15)
_GREY_SHIFT = 15


def _as_uint8_batch(img: torch.Tensor | np.ndarray) -> torch.Tensor:
    """RGB image(s) as int64 [B,3,H,W] 0..255; floats are taken as 0..1."""
    if isinstance(img, np.ndarray):
        arr = torch.from_numpy(np.ascontiguousarray(img))
        # numpy images are H×W×3 (or B×H×W×3), the layout OpenCV and hdme.images use.
        arr = arr.permute(2, 0, 1) if arr.dim() == 3 else arr.permute(0, 3, 1, 2)
    else:
        arr = img
    if arr.dim() == 3:
        arr = arr.unsqueeze(0)
    if arr.dtype.is_floating_point:
        arr = torch.round(arr.clamp(0.0, 1.0) * 255.0)
    return arr.to(torch.int64)


def laplacian_variance(img: torch.Tensor | np.ndarray) -> torch.Tensor | float:
    """Laplacian variance of RGB image(s): a float for one image, a float64 tensor [B] for a batch.

    Accepts torch [3,H,W] / [B,3,H,W] (float 0..1 or uint8) or numpy H×W×3 uint8.
    """
    if isinstance(img, np.ndarray) and img.ndim == 3 and img.dtype == np.uint8:
        # OpenCV itself for one numpy image: the same numbers at a fraction of the cost
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
    batch = _as_uint8_batch(img)
    r, g, b = batch[:, 0], batch[:, 1], batch[:, 2]
    wr, wg, wb = _GREY_WEIGHTS
    grey = (r * wr + g * wg + b * wb + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT
    grey = F.pad(grey[:, None].to(torch.float64), (1, 1, 1, 1), mode="reflect")
    lap = grey[:, :, :-2, 1:-1] + grey[:, :, 2:, 1:-1] + grey[:, :, 1:-1, :-2] + grey[:, :, 1:-1, 2:] - 4.0 * grey[:, :, 1:-1, 1:-1]
    var = lap.flatten(1).var(dim=1, unbiased=False)
    single = (isinstance(img, np.ndarray) and img.ndim == 3) or (isinstance(img, torch.Tensor) and img.dim() == 3)
    return float(var[0]) if single else var

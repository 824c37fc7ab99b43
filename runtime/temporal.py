"""Steadier σ maps on video: motion-gated exponential averaging (``hdme run --temporal-filter``).

A network run frame by frame answers camera noise with flicker: on a static scene σ wobbles by
tenths of a pixel from frame to frame. Where nothing changes, σ is averaged over past frames
(weight ``STATIC_WEIGHT`` for the new frame: noise falls to about a third); where the picture
moves or σ itself jumps, the new frame's σ is taken as it is, so moving objects, cuts and focus
changes are followed at once instead of smeared.

Change is judged twice, each on a soft ramp from "no change" to "certainly changed":
- in the picture: grey levels of a 4×-reduced frame (averaging 16 pixels quietens sensor noise)
  against the running average of past frames, widened by a few pixels because σ at a pixel is
  estimated from its neighbourhood;
- in σ itself: a jump, averaged over the same 4×4 blocks, larger than the network's own
  frame-to-frame noise, which catches a focus change in textureless regions, where the picture
  hardly changes but σ does.
The thresholds hold for cameras as noisy as a few hundred photons at white; with more noise the
filter averages less, it does not smear. It costs about 2 ms a 640×480 frame on one CPU core.
"""

from __future__ import annotations

import cv2
import numpy as np

STATIC_WEIGHT = 0.25  # weight of the new frame's σ where nothing changed
REDUCTION = 4  # the picture's change is judged on frames reduced this many times per side
PICTURE_RAMP = (3.0, 10.0)  # grey levels (0–255), smoothed difference of reduced frames: no change … certainly changed
SIGMA_RAMP = (0.5, 1.5)  # px of σ: no change … certainly changed
SPREAD = 5  # px of the reduced frame a change is widened by (σ's receptive field)


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


class TemporalFilter:
    """Call with each frame (BGR uint8) and its σ map (px, same H×W); returns the steadied map.
    The first frame, and a frame of another size, start afresh."""

    def __init__(self, static_weight: float = STATIC_WEIGHT) -> None:
        if not 0.0 < static_weight <= 1.0:
            raise ValueError(f"the new frame's weight must lie in (0, 1], got {static_weight}")
        self.static_weight = np.float32(static_weight)
        self._picture: np.ndarray | None = None  # running average of the reduced grey frames
        self._sigma: np.ndarray | None = None  # running average of σ
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * SPREAD + 1, 2 * SPREAD + 1))

    def reset(self) -> None:
        self._picture = self._sigma = None

    def _reduced(self, frame_bgr: np.ndarray) -> np.ndarray:
        h, w = frame_bgr.shape[:2]
        grey = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return cv2.resize(grey, (max(1, w // REDUCTION), max(1, h // REDUCTION)), interpolation=cv2.INTER_AREA)

    def __call__(self, frame_bgr: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        picture = self._reduced(frame_bgr)
        sigma = np.asarray(sigma, dtype=np.float32)
        if self._sigma is None or self._sigma.shape != sigma.shape:
            self._picture, self._sigma = picture, sigma.copy()
            return sigma
        # Smoothing the signed difference quietens noise further; a moving edge keeps its sign.
        change = np.abs(cv2.GaussianBlur(picture - self._picture, (0, 0), 1.0))
        moved = cv2.dilate(_ramp(change, *PICTURE_RAMP), self._kernel)
        delta = sigma - self._sigma
        # Judged on the reduced grid too: the mean jump over a block, which noise rarely fakes.
        jumped = _ramp(cv2.resize(np.abs(delta), picture.shape[::-1], interpolation=cv2.INTER_AREA), *SIGMA_RAMP)
        weight = self.static_weight + (1.0 - self.static_weight) * np.maximum(moved, jumped)
        self._picture += weight * (picture - self._picture)
        delta *= cv2.resize(weight, sigma.shape[::-1], interpolation=cv2.INTER_LINEAR)
        self._sigma += delta
        return self._sigma.copy()

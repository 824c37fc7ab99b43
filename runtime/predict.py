"""Single images → σ maps in the input's pixels, with downscaling or tiling for large inputs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from hdme.conventions import SIGMA_MAX, output_to_sigma, rescale_sigma, rgb_to_input, save_sigma_map, side_by_side
from hdme.errors import HdmeError
from hdme.images import expand_inputs, make_prediction_folder, read_image, size_text, write_image
from hdme.runtime.backends import create_backend

MIN_SIDE = 32
AUTO_TILE_ABOVE = 2048  # px on the longer side: beyond it a whole image costs GBs of activations
DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64
FORMATS = ("npy", "png")
# Test-time augmentation: the axes of the NCHW input each pass mirrors; every mode starts with the
# input as is (no axes), so one pass is the plain prediction.
TTA_FLIPS = {"none": ((),), "flip": ((), (3,)), "flip4": ((), (3,), (2,), (2, 3))}
DEFAULT_TTA = "flip"  # for still images; streams default to one pass (latency)
# A map whose σ reaches this share of the range it can read may be clipped: blur beyond SIGMA_MAX
# reads as about SIGMA_MAX.
SATURATION_LEVEL = 0.85
# Extended range: the image at 1/2 and 1/4 scale, where σ shrinks with it; a coarser estimate
# takes over where it reads beyond what the finer one can measure (ramps in input px).
EXTEND_SCALES = (2, 4)
EXTEND_RAMP = (0.6 * SIGMA_MAX, 0.8 * SIGMA_MAX)  # at scale 2; scale s multiplies it by s / 2


def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad an NCHW batch at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, neighbours overlapping by at
    least ``overlap`` px, the last one flush with the end."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def blend_window(h: int, w: int, overlap: int) -> np.ndarray:
    """Per-pixel weights that fall off linearly over ``overlap`` px towards a tile's edges, so
    overlapping tiles fade into each other instead of leaving seams."""
    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        return np.minimum(1.0, np.minimum(i + 1, n - i) / (overlap + 1))

    return np.outer(ramp(h), ramp(w))


def range_top(predictor) -> float:
    """σ px from which ``predictor``'s last map reads at the top of its range, where the blur may be
    larger than it reads (predictors without a ``last_range_max`` read up to SIGMA_MAX)."""
    return SATURATION_LEVEL * getattr(predictor, "last_range_max", SIGMA_MAX)


def saturated_share(sigma: np.ndarray, predictor) -> float:
    """Share of the pixels of ``predictor``'s last map ``sigma`` at the top of its range."""
    return float(np.mean(sigma >= range_top(predictor)))


def merge_scales(sigma: np.ndarray, coarse: dict[int, np.ndarray]) -> np.ndarray:
    """Merge a full-scale σ map with estimates made at 1/s scale (already in input px and size):
    each coarser one fades in where the finer estimate nears the top of what it can measure. The
    finer estimate decides, not the coarser: shrunk 4×, a flat region reads as heavily blurred."""
    merged = sigma.astype(np.float32, copy=True)
    lo, hi = EXTEND_RAMP
    for s in sorted(coarse):
        weight = np.clip((merged - lo * s / 2) / ((hi - lo) * s / 2), 0.0, 1.0)
        merged += weight * (coarse[s] - merged)
    return merged


def check_tta(tta: str) -> str:
    if tta not in TTA_FLIPS:
        raise HdmeError(f"unknown test-time augmentation '{tta}' (choose {', '.join(TTA_FLIPS)})")
    return tta


def infer_mirrored(backend, x: np.ndarray, hw: tuple[int, int], tta: str = "none") -> np.ndarray:
    """The backend's output over the image ``x[..., :h, :w]`` of a batch padded by
    ``pad_to_multiple``, averaged over the mirrored views that ``tta`` names: N×1×h×w.

    Defocus does not depend on orientation, but the network's errors on real photos do, so the mean
    over mirrored views scores better on real photos (figures in the model card), at one pass per view.
    Each view mirrors the image and is padded again: mirroring the padded batch would move the
    padding to the top/left and shift the image against the network's stride-32 grid."""
    h, w = hw
    views = TTA_FLIPS[tta]
    y = backend.infer(x)[..., :h, :w]
    if len(views) == 1:
        return y
    image = x[..., :h, :w]
    total = y.astype(np.float32)  # accumulate in float32 whatever the model's output type
    for axes in views[1:]:
        # No contiguous copy here: np.pad makes one, and every backend's check_input otherwise.
        view = pad_to_multiple(np.flip(image, axes), backend.multiple)
        total += np.flip(backend.infer(view)[..., :h, :w], axes)
    return total / len(views)


@dataclass
class Plan:
    mode: str  # "direct" | "downscale" | "tile"
    work_hw: tuple[int, int]
    tiles: int = 1
    views: int = 1  # mirrored views averaged (test-time augmentation)

    def describe(self, h: int, w: int) -> str:
        if self.mode == "downscale":
            text = f"downscaled {size_text(h, w)} to {size_text(*self.work_hw)} (σ rescaled to input px)"
        elif self.mode == "tile":
            text = f"tiled {size_text(h, w)} into {self.tiles} tiles of {size_text(*self.work_hw)}"
        else:
            text = f"{size_text(h, w)} whole"
        return text + (f", mean of {self.views} mirrored views" if self.views > 1 else "")


class DefocusPredictor:
    """σ px for RGB uint8 images of any size from 32 px up.

    ``max_side``: downscale images whose longer side exceeds it (σ rescaled back to input px).
    ``tile``: process images larger than ``tile`` px in overlapping tiles at native resolution.
    With neither, images beyond 2048 px are tiled at 1024 px, and engines with a fixed profile
    tile at their largest input.
    ``tta``: ``none`` (one pass), ``flip`` (with the left-right mirror, 2 passes) or ``flip4``
    (also the upside-down views, 4 passes); σ is the mean over the passes. Default: ``flip``.
    ``extend_range``: also estimate at 1/2 and 1/4 scale and merge (``merge_scales``), so blur
    beyond the network's 10 px reads up to about 40 px, at about 1.3× the compute.
    """

    def __init__(self, model=None, backend: str = "auto", max_side: int | None = None, tile: int | None = None,
                 overlap: int = DEFAULT_OVERLAP, precision: str | None = None, tta: str | None = None,
                 extend_range: bool = False, **options) -> None:
        if max_side is not None and max_side < MIN_SIDE:
            raise HdmeError(f"the longest side to downscale to must be at least {MIN_SIDE} px")
        if tile is not None and tile <= 2 * overlap:
            raise HdmeError(f"tiles must be larger than twice the overlap ({2 * overlap} px)")
        self.tta = check_tta(tta or DEFAULT_TTA)
        self.backend = create_backend(model, backend, precision, **options)
        self.max_side, self.tile, self.overlap = max_side, tile, overlap
        self.extend_range = extend_range
        self.last_range_max = SIGMA_MAX  # px the last map could read: more with coarser scales
        self.last_plan: Plan | None = None

    def plan(self, h: int, w: int) -> Plan:
        longest, views = max(h, w), len(TTA_FLIPS[self.tta])
        if self.max_side and longest > self.max_side:
            scale = self.max_side / longest
            return Plan("downscale", (max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))), views=views)
        tile = self.tile
        if tile is None and self.backend.max_hw is not None and (h > self.backend.max_hw[0] or w > self.backend.max_hw[1]):
            tile = min(self.backend.max_hw)
        if tile is None and longest > AUTO_TILE_ABOVE:
            tile = DEFAULT_TILE
        if tile and longest > tile:
            th, tw = min(h, tile), min(w, tile)
            n = len(tile_starts(h, th, self.overlap)) * len(tile_starts(w, tw, self.overlap))
            return Plan("tile", (th, tw), n, views)
        return Plan("direct", (h, w), views=views)

    def _infer(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        x = pad_to_multiple(rgb_to_input(rgb), self.backend.multiple)
        return output_to_sigma(infer_mirrored(self.backend, x, (h, w), self.tta)[0, 0])

    def predict(self, rgb: np.ndarray, on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """RGB uint8 H×W×3 (or H×W grey) → float32 σ px, H×W. ``on_progress(done, total)`` is
        called after each tile (a whole image is one), so callers can show progress on huge photos."""
        rgb = np.asarray(rgb)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[..., None], 3, axis=2)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise HdmeError(f"expected an RGB uint8 image H×W×3, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            raise HdmeError(f"image is {size_text(h, w)}; the network needs at least {MIN_SIDE} px on a side")
        plan = self.last_plan = self.plan(h, w)
        report = on_progress or (lambda done, total: None)
        sigma = self._predict_planned(rgb, plan, report)
        self.last_range_max = SIGMA_MAX
        if not self.extend_range:
            return sigma
        coarse = {}
        for s in EXTEND_SCALES:
            sh, sw = round(h / s), round(w / s)
            if min(sh, sw) < MIN_SIDE:
                break
            small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
            coarse[s] = rescale_sigma(self._predict_planned(small, self.plan(sh, sw), lambda done, total: None),
                                      (sh, sw), (h, w))
            self.last_range_max = SIGMA_MAX * s
        return merge_scales(sigma, coarse)

    def _predict_planned(self, rgb: np.ndarray, plan: Plan, report: Callable[[int, int], None]) -> np.ndarray:
        h, w = rgb.shape[:2]
        if plan.mode == "direct":
            sigma = self._infer(rgb)
            report(1, 1)
            return sigma
        if plan.mode == "downscale":
            wh, ww = plan.work_hw
            small = cv2.resize(rgb, (ww, wh), interpolation=cv2.INTER_AREA)
            sigma = rescale_sigma(self._infer(small), (wh, ww), (h, w))
            report(1, 1)
            return sigma
        th, tw = plan.work_hw
        total = np.zeros((h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        window = blend_window(th, tw, self.overlap)
        starts = [(y, x) for y in tile_starts(h, th, self.overlap) for x in tile_starts(w, tw, self.overlap)]
        for done, (y, x) in enumerate(starts, 1):
            total[y:y + th, x:x + tw] += self._infer(rgb[y:y + th, x:x + tw]) * window
            weight[y:y + th, x:x + tw] += window
            report(done, len(starts))
        return total / weight

    def close(self) -> None:
        self.backend.close()


@dataclass
class PredictResult:
    source: Path
    ok: bool
    message: str  # the plan on success, the one-line error otherwise
    size: tuple[int, int] | None = None
    sigma_mean: float | None = None
    sigma_max: float | None = None
    saturated: float | None = None  # share of pixels at the top of the range (see saturated_share)
    ms: float | None = None
    outputs: tuple[Path, ...] = ()


def write_prediction(out_dir: Path, name: str, rgb: np.ndarray, sigma: np.ndarray, formats=FORMATS,
                     vmax: float = SIGMA_MAX) -> tuple[Path, ...]:
    """DIR/NAME.npy (σ px) and DIR/NAME.png (input | colour map on 0–``vmax`` px | scale bar),
    each atomically."""
    written = []
    if "npy" in formats:
        written.append(save_sigma_map(out_dir / f"{name}.npy", sigma))
    if "png" in formats:
        picture = side_by_side(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), sigma, vmax)
        written.append(write_image(out_dir / f"{name}.png", picture, bgr=True))
    return tuple(written)


def output_names(paths: list[Path]) -> list[str]:
    """Output stems, one per input and all different: an input whose stem an earlier input took
    gets STEM_2, STEM_3…, skipping any name another input has as its own stem."""
    taken = {p.stem for p in paths}
    names, given = [], set()
    for p in paths:
        name, k = p.stem, 1
        while name in given or (k > 1 and name in taken):
            k += 1
            name = f"{p.stem}_{k}"
        given.add(name)
        names.append(name)
    return names


def predict_files(predictor, inputs: list[str | Path], out_dir: Path, formats=FORMATS, on_result=None,
                  vmax: float = SIGMA_MAX, on_progress=None) -> list[PredictResult]:
    """Run ``predictor`` (anything with ``.predict(rgb)``) over files and folders; a bad file gets
    a failed result with one line and the rest still run. Files inside ``out_dir``, or inside
    any other folder a prediction wrote to, are not inputs when a folder is expanded, so rerunning
    into a subfolder does not take in earlier outputs.
    ``vmax``: the top of the PNG pictures' colour scale (σ px). ``on_progress(path, done, total)``
    follows the tiles of each image (the predictor's ``predict`` must take ``on_progress``)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise HdmeError(f"unknown output format {bad[0]!r} (choose from {', '.join(FORMATS)})")
    if not vmax > 0:
        raise HdmeError(f"the colour scale's top must be positive, not {vmax}")
    out_dir = Path(out_dir)
    paths = expand_inputs(inputs, exclude=out_dir)
    if not paths:
        raise HdmeError("no input images found")
    make_prediction_folder(out_dir)
    results = []
    for path, name in zip(paths, output_names(paths)):
        try:
            rgb = read_image(path, min_side=MIN_SIDE)
            start = time.perf_counter()
            if on_progress is None:
                sigma = predictor.predict(rgb)
            else:
                sigma = predictor.predict(rgb, on_progress=lambda done, total: on_progress(path, done, total))
            ms = (time.perf_counter() - start) * 1e3
            try:
                outputs = write_prediction(out_dir, name, rgb, sigma, formats, vmax)
            except OSError as exc:
                raise HdmeError(f"{path}: cannot write its maps to {out_dir} ({exc.strerror or exc})") from None
            plan = getattr(predictor, "last_plan", None)
            h, w = rgb.shape[:2]
            message = plan.describe(h, w) if plan else "one pass"
            result = PredictResult(path, True, message, (h, w), float(sigma.mean()), float(sigma.max()),
                                   saturated_share(sigma, predictor), ms, outputs)
        except HdmeError as exc:
            message = str(exc)
            result = PredictResult(path, False, message if message.startswith(str(path)) else f"{path}: {message}")
        results.append(result)
        if on_result:
            on_result(result)
    return results

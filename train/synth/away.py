"""Evaluation recipes away from the training mix: other content, other PSF shapes, other noise, and
σ spread evenly over its whole range.

- ``away-leaves``: dead leaves (hundreds of occluding discs and ellipses, sizes from a power law) on a
  smooth random depth surface, with photo, octave-noise and flat fills; hexagonal-iris and ring PSFs, blurred in linear light;
  heteroscedastic Gaussian sensor noise, then the sRGB tone curve. σ 0–10 px.
- ``away-dof``: a bundled photo with a smooth thin-lens depth, one to three photo cut-outs in front of
  it; Gaussian or disc PSFs; light noise and heavy JPEG (quality 15–40). σ 0–10 px.
- ``away-large``: ``away-leaves`` for large frames with σ up to 30 px, beyond the network's range.

Depth follows occlusion (what is painted later is nearer), and the inverse depth of every scene is
equalised over its pixels before the thin lens turns it into σ: the order is kept, so the scene
stays a thin-lens scene, while σ covers [0, σ_max] evenly in every image. CPU only (OpenCV/numpy).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from hdme.errors import HdmeError
from hdme.train.synth.noise import jpeg, jpeg_quality_problem
from hdme.train.synth.recipe import weights_problem
from hdme.train.synth.render import PSF_SHAPES, linear_to_srgb, render_defocus, scale_contrast, srgb_to_linear
from hdme.train.synth.scenes import _octave_noise, _shape_mask, _sharp_photo
from hdme.train.synth.stream import choose
from hdme.train.synth.maps import synthetic_inverse_depth

SCENES = ("leaves", "dof")
NOISES = ("linear", "jpeg")


@dataclass
class AwayRecipe:
    name: str
    scene: str  # "leaves" | "dof"
    psf: dict[str, float] = field(default_factory=lambda: {"gaussian": 1.0})
    sigma_max: float = 10.0  # px: σ covers [0, sigma_max] evenly in every image
    noise: str = "linear"  # "linear": heteroscedastic sensor noise in linear light; "jpeg": light noise, heavy JPEG
    jpeg_quality: list[int] = field(default_factory=lambda: [15, 40])
    render_error_8bit: float = 2.0  # worst-case layering error of the render, in 8-bit grey levels (as SynthRecipe)
    contrast: float = 1.0  # the sharp scene's deviation from its mean grey times this: haze, flat light
    kind: str = "away"  # tells a recipe dictionary of this kind from a SynthRecipe's

    def __post_init__(self) -> None:
        problems = []
        if self.scene not in SCENES:
            problems.append(f"scene must be one of {SCENES}")
        problems += filter(None, (weights_problem("psf", self.psf, PSF_SHAPES), jpeg_quality_problem(self.jpeg_quality)))
        if self.noise not in NOISES:
            problems.append(f"noise must be one of {NOISES}")
        if not 0.0 < self.contrast <= 1.0:
            problems.append("contrast must be within (0, 1]")
        if not 0.0 < self.sigma_max <= 64.0:
            problems.append("sigma_max must be within (0, 64] px")
        if problems:
            raise HdmeError(f"recipe '{self.name}': " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "AwayRecipe":
        return dataclasses.replace(self, **changes)


AWAY_RECIPES: dict[str, AwayRecipe] = {
    "away-leaves": AwayRecipe("away-leaves", "leaves", psf={"hexagon": 0.5, "ring": 0.5}, noise="linear"),
    "away-dof": AwayRecipe("away-dof", "dof", psf={"gaussian": 0.5, "disc": 0.5}, noise="jpeg"),
    "away-large": AwayRecipe("away-large", "leaves", psf={"gaussian": 0.25, "disc": 0.25, "hexagon": 0.25, "ring": 0.25},
                             sigma_max=30.0, noise="linear"),
}


def equalise(inv_depth: np.ndarray) -> np.ndarray:
    """Inverse depth → its pixel-weighted rank in [-1, 1] (ties share their mean rank): the order of
    depths is kept and every value is equally common."""
    values, inverse, counts = np.unique(inv_depth.ravel(), return_inverse=True, return_counts=True)
    mid_rank = (np.cumsum(counts) - 0.5 * counts) / inv_depth.size
    return (2.0 * mid_rank[inverse] - 1.0).reshape(inv_depth.shape).astype(np.float32)


def thin_lens_even(inv_depth: np.ndarray, rng: np.random.Generator, sigma_max: float) -> np.ndarray:
    """σ px from inverse depth, spread evenly over [0, sigma_max]: the equalised depth v in [-1, 1]
    with the focus plane on the surface nearest the far end, the middle or the near end (σ is linear
    in |v − v_f|, and the farthest surface from focus gets sigma_max)."""
    v = equalise(inv_depth)
    target = float(rng.choice([-1.0, 0.0, 1.0]))
    focus = v.flat[int(np.argmin(np.abs(v - target)))]
    distance = np.abs(v - focus)
    return (sigma_max * distance / max(float(distance.max()), 1e-6)).astype(np.float32)


def _leaf_fill(shape: tuple[int, int], rng: np.random.Generator, source) -> np.ndarray:
    """A texture for one leaf, float32 [h, w, 3] in [0, 1]: a photo crop, octave noise between two
    colours, or a flat colour with a faint gradient."""
    h, w = shape
    side = max(h, w)
    pick = rng.random()
    if pick < 0.45:
        tex = _sharp_photo(side, rng, source)
    elif pick < 0.75:
        t = _octave_noise(side, rng)[..., None]
        a, b = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        tex = a * (1.0 - t) + b * t
    else:
        ys = np.linspace(0.0, 1.0, side, dtype=np.float32)[:, None, None]
        tex = np.clip(rng.random(3).astype(np.float32) + rng.uniform(-0.15, 0.15) * ys, 0.0, 1.0) * np.ones((side, side, 3), np.float32)
    return tex[:h, :w]


def draw_leaves(size: int, rng: np.random.Generator, source) -> tuple[np.ndarray, np.ndarray]:
    """Dead leaves on a scene's depth: discs and ellipses with radii from a power law (density ∝ r⁻³,
    from 2 % to 40 % of the side), each at the depth of a smooth random surface where it lies, a few
    slanted along it, painted far to near. Neighbouring leaves sit at similar depths, as the leaves of
    one bush do; with independent depths a small leaf far from focus would be smeared over its
    neighbours until no estimator could tell its σ from theirs.
    Returns the all-in-focus image (float32 [S, S, 3], 0..1) and its inverse depth (float32 [S, S])."""
    surface = synthetic_inverse_depth(size, rng).numpy().astype(np.float32)
    image = np.broadcast_to(rng.random(3).astype(np.float32), (size, size, 3)).copy()
    inv_depth = surface - 0.05  # the backdrop: behind every leaf
    r_min, r_max = 0.02 * size, 0.4 * size
    leaves, area = [], 0.0
    while area < 4.0 * size * size and len(leaves) < 4000:  # about 98 % of the frame covered
        # inverse transform sampling of p(r) ∝ r⁻³ on [r_min, r_max]
        u = rng.random()
        r = 1.0 / math.sqrt(u / r_max**2 + (1.0 - u) / r_min**2)
        cy, cx = rng.uniform(-0.05, 1.05, 2) * size
        depth = float(surface[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))]) + rng.normal(0.0, 0.02)
        leaves.append((depth, r, cy, cx, rng.uniform(0.4, 1.0), rng.uniform(0, 180), rng.random() < 0.3))
        area += math.pi * r * r * 0.7
    for depth, r, cy, cx, aspect, angle, slanted in sorted(leaves, key=lambda leaf: leaf[0]):
        y0, y1 = max(0, int(cy - r) - 1), min(size, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(size, int(cx + r) + 2)
        if y1 <= y0 or x1 <= x0:
            continue
        canvas = np.zeros((y1 - y0, x1 - x0), np.uint8)
        centre = (int((cx - x0) * 16), int((cy - y0) * 16))
        cv2.ellipse(canvas, centre, (max(1, int(r * 16)), max(1, int(r * aspect * 16))), angle, 0, 360, 255, -1,
                    cv2.LINE_AA, 4)
        alpha = canvas.astype(np.float32)[..., None] / 255.0
        if not alpha.any():
            continue
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1.0 - alpha) + _leaf_fill(canvas.shape, rng, source) * alpha
        # A slanted leaf follows the surface under it; the others are parallel to the sensor.
        leaf_depth = surface[y0:y1, x0:x1] - surface[y0:y1, x0:x1].mean() + depth if slanted else depth
        inv_depth[y0:y1, x0:x1] = np.where(alpha[..., 0] > 0.5, leaf_depth, inv_depth[y0:y1, x0:x1])
    return np.clip(image, 0.0, 1.0), inv_depth


def draw_dof(size: int, rng: np.random.Generator, source) -> tuple[np.ndarray, np.ndarray]:
    """A sharp photo crop on a smooth synthetic depth (a tilted plane, sometimes a step, smooth
    undulation), with one to three cut-outs of other photos (blob, ellipse and polygon masks) in
    front of it, each nearer than the last."""
    image = _sharp_photo(size, rng, source)
    inv_depth = synthetic_inverse_depth(size, rng).numpy().astype(np.float32)
    for layer in range(int(rng.integers(1, 4))):
        alpha, _ = _shape_mask(str(rng.choice(["blob", "ellipse", "polygon"])), size, rng)
        if not alpha.any():
            continue
        cut = _sharp_photo(size, rng, source)
        image = image * (1.0 - alpha[..., None]) + cut * alpha[..., None]
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        plane = rng.uniform(-0.1, 0.1) * xs + rng.uniform(-0.1, 0.1) * ys
        inv_depth = np.where(alpha > 0.5, 1.2 + layer + plane, inv_depth)
    return np.clip(image, 0.0, 1.0).astype(np.float32), inv_depth


def synthesize_away(recipe: AwayRecipe, size: int, count: int, rng: np.random.Generator, generator: torch.Generator,
                    source, device: torch.device | str = "cpu"):
    """``count`` samples of an away recipe, as ``synthesize`` returns them (a SynthBatch)."""
    from hdme.train.synth.stream import SynthBatch

    device = torch.device(device)
    draw = draw_leaves if recipe.scene == "leaves" else draw_dof
    images, sigmas, sharps, shapes = [], [], [], []
    for _ in range(count):
        sharp, inv_depth = draw(size, rng, source)
        sigma = thin_lens_even(inv_depth, rng, recipe.sigma_max)
        shape = choose(rng, recipe.psf)
        sharp_t = torch.from_numpy(np.ascontiguousarray(sharp)).permute(2, 0, 1)[None].to(device)
        if recipe.contrast != 1.0:
            sharp_t = scale_contrast(sharp_t, recipe.contrast)
        sigma_t = torch.from_numpy(sigma)[None, None].to(device)
        linear = recipe.noise == "linear"
        blurred = render_defocus(srgb_to_linear(sharp_t) if linear else sharp_t, sigma_t, psf=shape,
                                 max_error=recipe.render_error_8bit / 255.0, sigma_max=recipe.sigma_max)[0]
        if linear:
            # Heteroscedastic sensor noise, variance a·x + b in linear light, then the tone curve.
            a, b = math.exp(rng.uniform(math.log(2e-4), math.log(4e-3))), math.exp(rng.uniform(math.log(1e-6), math.log(1e-4)))
            noise = torch.randn(blurred.shape, generator=generator, device=generator.device).to(device)
            image = linear_to_srgb(blurred + (a * blurred.clamp(min=0) + b).sqrt() * noise)
        else:
            noise = torch.randn(blurred.shape, generator=generator, device=generator.device).to(device)
            image = (blurred + float(rng.uniform(0.002, 0.01)) * noise).clamp(0.0, 1.0)
            lo, hi = recipe.jpeg_quality
            image = jpeg(image, int(rng.integers(lo, hi + 1)))
        images.append(image.clamp(0.0, 1.0))
        sigmas.append(sigma_t[0])
        sharps.append(sharp_t[0])
        shapes.append(shape)
    sharp_batch = torch.stack(sharps)
    return SynthBatch(torch.stack(images).float(), torch.stack(sigmas).float(), sharp_batch, sharp_batch,
                      [recipe.scene] * count, shapes, None)

"""The training stream in two parts: ``draw_batch`` makes the CPU-side choices (source crops,
scenes, σ maps, every random parameter) into compact arrays, and ``render_draw`` shuffles, renders
(Eq. 4) and degrades them, batched in torch on the target device. The drawing can run in other
processes while the device renders and trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hdme.train.synth.maps import make_map
from hdme.train.synth.noise import NoiseDraw, draw_noise, noise_batch
from hdme.train.synth.recipe import SynthRecipe
from hdme.train.synth.render import camera_blur, enlargement_blur, linear_to_srgb, render_defocus, scale_contrast, srgb_to_linear, zoom_in
from hdme.train.synth.scenes import draw_scene
from hdme.train.synth.shuffle import shuffle_pixels
from hdme.train.synth.sources import as_source


@dataclass
class SynthBatch:
    image: torch.Tensor  # [B,3,S,S] rendered, noised, 0..1
    sigma: torch.Tensor  # [B,1,S,S] label σ px (camera floor included)
    sharp: torch.Tensor  # [B,3,S,S] the all-in-focus image that was blurred
    source: torch.Tensor  # [B,3,S,S] before shuffling (scenes: the scene itself)
    kinds: list[str]  # map kind per sample, "scene" for structured scenes
    psf: list[str]
    camera_sigma: torch.Tensor | None  # [B] px


@dataclass
class SynthDraw:
    """Every CPU-side choice of a batch, in compact arrays: what a drawing process hands to the
    device that renders (``render_draw``)."""

    source: torch.Tensor  # uint8 [B,S,S,3]: source crops, or the scenes themselves
    sigma: torch.Tensor  # float32 [B,S,S] px, before the camera floor
    kinds: list[str]
    psf: list[str]
    camera_sigma: torch.Tensor | None  # float32 [B] px
    noise: NoiseDraw
    linear: torch.Tensor | None = None  # bool [B]: blurred in linear light
    contrast: torch.Tensor | None = None  # float32 [B]: factor on the sharp image's deviation from its mean
    zoom: torch.Tensor | None = None  # float32 [B]: the rendered sample enlarged this much (1: as rendered)
    zoom_offset: torch.Tensor | None = None  # float32 [B,2]: where its window lies, x and y in [0, 1]

    def pin_memory(self) -> "SynthDraw":
        """Page-locked copies (a DataLoader calls this), so the copy to the device runs asynchronously."""
        camera = None if self.camera_sigma is None else self.camera_sigma.pin_memory()
        return dataclasses.replace(self, source=self.source.pin_memory(), sigma=self.sigma.pin_memory(), camera_sigma=camera)


def choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _shuffled_sharpness(rgb: np.ndarray) -> float:
    """Expected Laplacian variance of the full shuffle of ``rgb``: its pixels become independent,
    and the 4-neighbour Laplacian of independent pixels has 4 + 16 = 20 times their variance."""
    return 20.0 * float(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64).var())


def _sharp_enough_crop(source, rng: np.random.Generator, size: int, min_sharpness: float, tries: int = 20) -> np.ndarray:
    """A source crop with colour spread enough to be sharp once shuffled (the best of ``tries``):
    a nearly uniform crop stays below the paper's sharpness bar even after shuffling and shows
    no blur."""
    best, best_score = None, -1.0
    for _ in range(tries):
        crop = source.sample(rng, size)
        score = _shuffled_sharpness(crop)
        if score >= 1.2 * min_sharpness:  # margin: one shuffle scatters around the expectation
            return crop
        if score > best_score:
            best, best_score = crop, score
    return best


def draw_batch(recipe: SynthRecipe, size: int, count: int, rng: np.random.Generator, source) -> SynthDraw:
    """The CPU part of ``count`` samples, fixed by ``rng``: scenes, source crops and their σ maps,
    PSF shapes, camera blur and noise choices."""
    dist = recipe.sigma_distribution()
    sources, sigmas, kinds = [], [], []
    for _ in range(count):
        if rng.random() < recipe.scene_fraction:
            # drawn only where the recipe asks for these scenes, so older recipes keep their streams
            if recipe.field_scene_fraction > 0 and rng.random() < recipe.field_scene_fraction:
                dense = recipe.dense_field_fraction > 0 and rng.random() < recipe.dense_field_fraction
                rgb, sigma = draw_scene(size, rng, source, dist, fine=dense, field_sigma_max=tuple(recipe.field_sigma_max))
            else:
                fine = recipe.fine_scene_fraction > 0 and rng.random() < recipe.fine_scene_fraction
                depth_field = recipe.depth_field_fraction > 0 and rng.random() < recipe.depth_field_fraction
                rgb, sigma = draw_scene(size, rng, source, dist, fine, depth_field)
            sigma = torch.from_numpy(sigma)
            kinds.append("scene")
        else:
            rgb = _sharp_enough_crop(source, rng, size, recipe.min_sharpness)
            kind = choose(rng, recipe.maps)
            crop = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
            sigma = make_map(kind, size, rng, dist, source=crop)
            kinds.append(kind)
        sources.append(torch.from_numpy(rgb))
        sigmas.append(sigma)
    psf = [choose(rng, recipe.psf) for _ in range(count)]
    camera_sigma = None
    if recipe.camera_sigma is not None:
        camera_sigma = torch.from_numpy(rng.uniform(*recipe.camera_sigma, count).astype(np.float32))
    noise = draw_noise(count, recipe.noise, rng, recipe.noise_probability, recipe.jpeg_probability,
                       recipe.bayer_probability, tuple(recipe.jpeg_quality))
    # Drawn last, in the order the keys were added, and only where asked for: older recipes keep their streams.
    linear = None
    if recipe.linear_light_probability > 0:
        linear = torch.from_numpy(rng.random(count) < recipe.linear_light_probability)
    contrast = None
    if recipe.low_contrast_probability > 0:
        lo, hi = np.log(recipe.contrast_range)
        factor = np.where(rng.random(count) < recipe.low_contrast_probability, np.exp(rng.uniform(lo, hi, count)), 1.0)
        contrast = torch.from_numpy(factor.astype(np.float32))
    sigma = torch.stack(sigmas).float()
    zoom = zoom_offset = None
    if recipe.zoom_probability > 0:
        wanted = np.where(rng.random(count) < recipe.zoom_probability, rng.uniform(*recipe.zoom_range, count), 1.0)
        # enlarged no further than keeps every label of the sample within the recipe's range
        top = sigma.amax(dim=(1, 2))
        if camera_sigma is not None and recipe.zoom_camera_blur_after:  # only the lens blur is enlarged
            room = (dist.max**2 - camera_sigma.square()).sqrt() / top.clamp(min=1e-3)
        else:
            cam = torch.zeros(count) if camera_sigma is None else camera_sigma
            room = dist.max / (top.square() + cam.square()).sqrt().clamp(min=1e-3)
        room = room.numpy()
        zoom = torch.from_numpy(np.clip(np.minimum(wanted, room), 1.0, None).astype(np.float32))
        zoom_offset = torch.from_numpy(rng.random((count, 2)).astype(np.float32))
    return SynthDraw(torch.stack(sources), sigma, kinds, psf, camera_sigma, noise, linear, contrast, zoom, zoom_offset)


def render_clean(recipe: SynthRecipe, draw: SynthDraw, generator: torch.Generator,
                 device: torch.device | str = "cpu") -> SynthBatch:
    """Shuffle and the Eq. 4 render of a draw, batched on ``device``, before any noise."""
    device = torch.device(device)
    kinds = draw.kinds
    source_batch = draw.source.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    sigma = draw.sigma.to(device, non_blocking=True)[:, None]
    sharp = source_batch
    shuffled = [i for i, k in enumerate(kinds) if k != "scene"]
    if recipe.shuffle != "none" and shuffled:
        sharp = source_batch.clone()
        sharp[shuffled] = shuffle_pixels(source_batch[shuffled], recipe.shuffle, generator)
    if draw.contrast is not None:
        sharp = scale_contrast(sharp, draw.contrast.to(device))
    camera_sigma = None
    sigma_max = recipe.sigma_distribution().max
    if draw.camera_sigma is not None:
        camera_sigma = draw.camera_sigma.to(device, non_blocking=True)
        cam = camera_sigma[:, None, None, None]
        # keep the label inside the recipe's range: √(σ² + σ_cam²) ≤ σ_max
        sigma = torch.minimum(sigma, (sigma_max**2 - cam**2).sqrt())
    zoomed = None if draw.zoom is None or not bool((draw.zoom > 1).any()) else draw.zoom.to(device) > 1
    camera_after_zoom = zoomed is not None and camera_sigma is not None and recipe.zoom_camera_blur_after
    lens_camera_sigma = torch.where(zoomed, 0.0, camera_sigma) if camera_after_zoom else camera_sigma
    linear = None if draw.linear is None else draw.linear.to(device)[:, None, None, None]
    light = sharp if linear is None else torch.where(linear, srgb_to_linear(sharp), sharp)
    image = render_defocus(light, sigma, psf=draw.psf, camera_sigma=lens_camera_sigma,
                           max_error=recipe.render_error_8bit / 255.0, sigma_max=sigma_max)
    if linear is not None:
        image = torch.where(linear, linear_to_srgb(image), image)
    if lens_camera_sigma is not None:
        sigma = (sigma.square() + lens_camera_sigma[:, None, None, None].square()).sqrt()
    if zoomed is not None:
        image, sigma, sharp, source_batch = _zoom_samples(draw, image, sigma, sharp, source_batch)
        if recipe.zoom_blur_labelled:
            added = enlargement_blur(draw.zoom[zoomed.cpu()]).to(device)[:, None, None, None]
            # within the recipe's range: the enlargement's blur is at most 1.4 px in quadrature
            sigma[zoomed] = (sigma[zoomed].square() + added.square()).sqrt().clamp(max=sigma_max)
        if camera_after_zoom:
            image[zoomed] = camera_blur(image[zoomed], camera_sigma[zoomed])
            sigma[zoomed] = (sigma[zoomed].square() + camera_sigma[zoomed, None, None, None].square()).sqrt()
    return SynthBatch(image.float(), sigma.float(), sharp, source_batch, kinds, draw.psf, camera_sigma)


def _zoom_samples(draw: SynthDraw, image: torch.Tensor, sigma: torch.Tensor, sharp: torch.Tensor,
                  source: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rendered samples a draw enlarges, before noise: the camera's noise, mosaic and JPEG
    come after the lens at the sensor's own pixel scale, so an enlarged sample shows the same
    scene content at a coarser scale and with wider blur (its labels times the factor), but the
    same grain. Samples that stay at factor 1 are left as rendered."""
    chosen = torch.nonzero(draw.zoom > 1).reshape(-1).to(image.device)
    factor = draw.zoom.to(image.device)[chosen]
    offset = draw.zoom_offset.to(image.device)[chosen]
    # the three pictures share one window per sample: one resampling of them stacked by channel
    pictures = torch.cat([image, sharp, source], dim=1)
    pictures[chosen] = zoom_in(pictures[chosen], factor, offset, "bicubic").clamp(0.0, 1.0)
    sigma = sigma.clone()
    sigma[chosen] = zoom_in(sigma[chosen], factor, offset, "bilinear") * factor[:, None, None, None]
    image, sharp, source = (p.contiguous() for p in pictures.split(3, dim=1))
    return image, sigma, sharp, source


def render_draw(recipe: SynthRecipe, draw: SynthDraw, generator: torch.Generator,
                device: torch.device | str = "cpu") -> SynthBatch:
    """The device part, batched on ``device``: shuffle, the Eq. 4 render and the noise; ``generator``
    (on ``device``) fixes their random numbers."""
    batch = render_clean(recipe, draw, generator, device)
    return dataclasses.replace(batch, image=noise_batch(batch.image, draw.noise, generator))


def synthesize(recipe: SynthRecipe, size: int, count: int, rng: np.random.Generator, generator: torch.Generator,
               source, device: torch.device | str = "cpu") -> SynthBatch:
    """Draw ``count`` samples. ``rng`` fixes every CPU-side choice, ``generator`` the device-side ones."""
    from hdme.train.synth.away import AwayRecipe, synthesize_away

    if isinstance(recipe, AwayRecipe):
        return synthesize_away(recipe, size, count, rng, generator, source, device)
    return render_draw(recipe, draw_batch(recipe, size, count, rng, source), generator, device)


class SyntheticStream:
    """Endless batches of (image [B,3,S,S] 0..1, σ [B,1,S,S] px), deterministic for a seed."""

    def __init__(self, recipe: SynthRecipe, size: int, batch: int, seed: int, device: torch.device | str = "cpu",
                 sources=None) -> None:
        self.recipe = recipe
        self.size = int(size)
        self.batch = int(batch)
        self.device = torch.device(device)
        self.source = as_source(sources)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def generate(self) -> SynthBatch:
        return synthesize(self.recipe, self.size, self.batch, self.rng, self.generator, self.source, self.device)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.generate()
        return batch.image, batch.sigma

    def __iter__(self):
        while True:
            yield self.next_batch()

"""The training stream: CPU-side source crops and scene drawing, then shuffle, render and noise
batched on the target device."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from hdme.train.synth.maps import make_map
from hdme.train.synth.noise import apply_noise
from hdme.train.synth.recipe import SynthRecipe
from hdme.train.synth.render import render_defocus
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


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1).float() / 255.0


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
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


def synthesize(recipe: SynthRecipe, size: int, count: int, rng: np.random.Generator, generator: torch.Generator,
               source, device: torch.device | str = "cpu") -> SynthBatch:
    """Draw ``count`` samples. ``rng`` fixes every CPU-side choice, ``generator`` the device-side ones."""
    from hdme.train.synth.away import AwayRecipe, synthesize_away

    if isinstance(recipe, AwayRecipe):
        return synthesize_away(recipe, size, count, rng, generator, source, device)
    device = torch.device(device)
    dist = recipe.sigma_distribution()
    sources, sigmas, kinds = [], [], []
    for _ in range(count):
        if rng.random() < recipe.scene_fraction:
            rgb, sigma = draw_scene(size, rng, source, dist)
            sources.append(_to_tensor(rgb, device))
            sigmas.append(torch.from_numpy(sigma).to(device))
            kinds.append("scene")
        else:
            crop = _to_tensor(_sharp_enough_crop(source, rng, size, recipe.min_sharpness), device)
            kind = _choose(rng, recipe.maps)
            sources.append(crop)
            sigmas.append(make_map(kind, size, rng, dist, source=crop, device=device))
            kinds.append(kind)
    source_batch = torch.stack(sources)
    sigma = torch.stack(sigmas)[:, None]
    sharp = source_batch
    shuffled = [i for i, k in enumerate(kinds) if k != "scene"]
    if recipe.shuffle != "none" and shuffled:
        sharp = source_batch.clone()
        sharp[shuffled] = shuffle_pixels(source_batch[shuffled], recipe.shuffle, generator)

    psf = [_choose(rng, recipe.psf) for _ in range(count)]
    camera_sigma = None
    if recipe.camera_sigma is not None:
        lo, hi = recipe.camera_sigma
        camera_sigma = torch.tensor(rng.uniform(lo, hi, count), dtype=torch.float32, device=device)
        cam = camera_sigma[:, None, None, None]
        # keep the label inside the trained range: √(σ² + σ_cam²) ≤ σ_max
        sigma = torch.minimum(sigma, (dist.max**2 - cam**2).sqrt())
    image = render_defocus(sharp, sigma, psf=psf, camera_sigma=camera_sigma, max_error=recipe.render_error_8bit / 255.0)
    if camera_sigma is not None:
        sigma = (sigma.square() + camera_sigma[:, None, None, None].square()).sqrt()
    image = apply_noise(image, recipe.noise, rng, generator, recipe.noise_probability, recipe.jpeg_probability,
                        recipe.bayer_probability)
    return SynthBatch(image.float(), sigma.float(), sharp, source_batch, kinds, psf, camera_sigma)


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

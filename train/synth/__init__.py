"""Synthetic defocus data with exact ground truth: COCO_shuffle sampling, structured scenes,
defocus maps, the Eq. 4 scatter render and sensor noise."""

from hdme.train.synth.recipe import RECIPES, SynthRecipe, get_recipe
from hdme.train.synth.render import render_defocus
from hdme.train.synth.sharpness import laplacian_variance
from hdme.train.synth.shuffle import shuffle_pixels
from hdme.train.synth.stream import SynthBatch, SyntheticStream, synthesize

__all__ = [
    "RECIPES", "SynthBatch", "SynthRecipe", "SyntheticStream", "get_recipe", "laplacian_variance",
    "render_defocus", "shuffle_pixels", "synthesize",
]

"""Synthesis recipes: everything that decides what the training stream draws, as JSON-able data.

A recipe file (train/configs/*.json, or any JSON path) keeps the synthesis settings under its
"data" key; other keys belong to the training stage.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from hdme.errors import HdmeError
from hdme.train.synth.maps import MAP_KINDS, SigmaDistribution
from hdme.train.synth.noise import NOISE_MODELS, jpeg_quality_problem
from hdme.train.synth.render import PSF_SHAPES
from hdme.train.synth.shuffle import SHUFFLE_MODES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def weights_problem(field: str, weights, known: tuple[str, ...]) -> str | None:
    """Why ``weights`` is not a draw over ``known`` names ({name: weight ≥ 0}, some positive), or None."""
    if (not isinstance(weights, dict) or not weights or any(k not in known for k in weights)
            or any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
        return f"{field} must weight some of {known}"
    return None


@dataclass
class SynthRecipe:
    name: str = "custom"
    shuffle: str = "full"  # "full" | "rowcol" | "none" (none keeps the source as it is)
    scene_fraction: float = 0.0  # share of structured scenes; the rest are shuffled-pixel samples
    fine_scene_fraction: float = 0.0  # share of those scenes drawn with many small shapes (dense edges)
    depth_field_fraction: float = 0.0  # share of those scenes whose background is a photo on a smooth depth field
    field_scene_fraction: float = 0.0  # share of scenes whose σ grows smoothly across the frame up to field_sigma_max
    field_sigma_max: list[float] = field(default_factory=lambda: [3.0, 10.0])  # [lo, hi] px: a field scene's largest σ
    dense_field_fraction: float = 0.0  # share of field scenes covered with many small shapes
    maps: dict[str, float] = field(default_factory=lambda: {"patch": 0.2, "gaussian": 0.4, "segment": 0.4})
    sigma: dict = field(default_factory=lambda: {"kind": "uniform", "max": 10.0})
    psf: dict[str, float] = field(default_factory=lambda: {"gaussian": 1.0})
    camera_sigma: list[float] | None = None  # [lo, hi] px: uniform camera blur, label σ = √(σ² + σ_cam²)
    noise: str = "paper"
    noise_probability: float = 0.1
    jpeg_probability: float = 0.0
    jpeg_quality: list[int] = field(default_factory=lambda: [60, 95])  # [lo, hi], drawn uniformly
    bayer_probability: float = 0.5  # share of camera-noised samples that go through a Bayer mosaic
    linear_light_probability: float = 0.0  # share of samples blurred in linear light, as a lens blurs, then sRGB-encoded
    low_contrast_probability: float = 0.0  # share of samples whose sharp image is pulled toward its mean grey
    contrast_range: list[float] = field(default_factory=lambda: [0.2, 1.0])  # [lo, hi]: that factor, log-uniform
    zoom_probability: float = 0.0  # share of samples enlarged after the lens and before the camera's noise
    zoom_range: list[float] = field(default_factory=lambda: [1.25, 2.5])  # [lo, hi]: that factor, uniform, capped so labels stay ≤ the σ maximum
    zoom_camera_blur_after: bool = False  # the camera's own blur on an enlarged sample comes after the enlargement, at the sensor's scale
    zoom_blur_labelled: bool = False  # an enlarged sample's labels take in the blur the enlargement itself adds (render.enlargement_blur)
    min_sharpness: float = 1000.0  # redraw source crops whose shuffle would stay below this Laplacian variance
    render_error_8bit: float = 2.0  # worst-case layering error of the render, in 8-bit grey levels (speed vs exactness)

    def __post_init__(self) -> None:
        problems = []
        if self.shuffle not in (*SHUFFLE_MODES, "none"):
            problems.append(f"shuffle must be one of {(*SHUFFLE_MODES, 'none')}")
        problems += filter(None, (weights_problem("maps", self.maps, MAP_KINDS), weights_problem("psf", self.psf, PSF_SHAPES),
                                  jpeg_quality_problem(self.jpeg_quality)))
        if self.noise not in NOISE_MODELS:
            problems.append(f"noise must be one of {NOISE_MODELS}")
        for key in ("scene_fraction", "fine_scene_fraction", "depth_field_fraction", "field_scene_fraction",
                    "dense_field_fraction", "noise_probability", "jpeg_probability", "bayer_probability",
                    "linear_light_probability", "low_contrast_probability", "zoom_probability"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                problems.append(f"{key} must be within [0, 1]")
        if not 0.0 < self.render_error_8bit <= 8.0:
            problems.append("render_error_8bit must be within (0, 8]")
        if not (len(self.contrast_range) == 2 and 0 < self.contrast_range[0] <= self.contrast_range[1] <= 1):
            problems.append("contrast_range must be [lo, hi] with 0 < lo ≤ hi ≤ 1")
        if not (len(self.zoom_range) == 2 and 1 <= self.zoom_range[0] <= self.zoom_range[1] <= 4):
            problems.append("zoom_range must be [lo, hi] with 1 ≤ lo ≤ hi ≤ 4")
        if self.camera_sigma is not None and not (len(self.camera_sigma) == 2 and 0 <= self.camera_sigma[0] <= self.camera_sigma[1] < 2):
            problems.append("camera_sigma must be [lo, hi] px with 0 ≤ lo ≤ hi < 2")
        try:
            sigma_max = self.sigma_distribution().max
        except (TypeError, ValueError) as exc:
            problems.append(f"sigma: {exc}")
        else:
            lo_hi = self.field_sigma_max
            if not (len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1] <= sigma_max):
                problems.append(f"field_sigma_max must be [lo, hi] px with 0 < lo ≤ hi ≤ the σ maximum ({sigma_max:g})")
        if problems:
            raise HdmeError(f"recipe '{self.name}': " + "; ".join(problems))

    def sigma_distribution(self) -> SigmaDistribution:
        return SigmaDistribution(**self.sigma)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "SynthRecipe":
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, SynthRecipe] = {
    # The paper: shuffled COCO crops, patch / Gaussian-bump / segment maps, Gaussian PSF, σ uniform
    # on [0, 10], light noise on 10 % of samples.
    "paper": SynthRecipe(name="paper"),
    # What the shipped model trains on: shuffled pixels next to structured scenes with thin-lens
    # depth, non-Gaussian PSFs labelled by their second moment, mostly small σ, the camera's own
    # blur as a σ floor, and camera noise with JPEG.
    "hdme": SynthRecipe(
        name="hdme",
        scene_fraction=0.7,
        maps={"patch": 0.25, "gaussian": 0.3, "segment": 0.25, "depth": 0.2},
        # Real photos are mostly 0–3 px: where blur cannot be seen (flat regions, large σ on
        # shuffled pixels) the network falls back on this prior, so it must look like real data.
        sigma={"kind": "favour_small", "max": 10.0, "small_max": 3.0, "small_prob": 0.7},
        psf={"gaussian": 0.4, "disc": 0.4, "mixture": 0.2},
        camera_sigma=[0.2, 0.45],
        noise="camera",
        noise_probability=0.6,
        jpeg_probability=0.3,
    ),
}
# `hdme` over the whole σ range: most draws above 3 px (the σ of real backgrounds and macro shots),
# a third of the scenes dense with small shapes so that blur is read from how edges spread,
# not from how many there are, and photo backgrounds on smooth depth fields.
RECIPES["hdme-range"] = dataclasses.replace(
    RECIPES["hdme"], name="hdme-range", fine_scene_fraction=0.35,
    sigma={"kind": "favour_small", "max": 10.0, "small_max": 3.0, "small_prob": 0.2},
    # Blurred backgrounds in photos are textured and their σ varies; web photos are often
    # compressed harder than quality 60.
    depth_field_fraction=0.4, jpeg_quality=[40, 95],
    # Lenses differ: five- and eight-bladed irises and a rim-darkened aperture beside the round ones.
    psf={"gaussian": 0.3, "disc": 0.25, "mixture": 0.15, "pentagon": 0.1, "octagon": 0.1, "dimrim": 0.1},
)

# `hdme-range`'s content with `hdme`'s σ prior: telling what the new scenes, apertures and codecs
# do away from the mix from what the prior does at small σ (where `hdme-range` loses).
RECIPES["hdme-broad"] = dataclasses.replace(
    RECIPES["hdme-range"], name="hdme-broad", sigma=dict(RECIPES["hdme"].sigma))
# `hdme-broad` with a quarter of its scenes drawn as field scenes: σ growing gradually across a
# photo from sharp to 3–10 px, which the other scenes (σ jumping between objects) lack.
RECIPES["hdme-field"] = dataclasses.replace(RECIPES["hdme-broad"], name="hdme-field", field_scene_fraction=0.25)
# `hdme-field` with half of its samples blurred in linear light: a lens spreads light, and the
# camera's tone curve comes after, so a blurred edge between bright and dark is brighter and its
# dark side narrower than a blur of the sRGB values; on dead leaves with smoothly varying σ the
# stage-6 release read 7–10 px 0.9 px lower there than on the same scenes blurred in sRGB.
RECIPES["hdme-field-linear"] = dataclasses.replace(RECIPES["hdme-field"], name="hdme-field-linear",
                                                   linear_light_probability=0.5)
# `hdme-field-linear` with more of its pixels at large σ: half of the scenes are field scenes, their
# largest σ drawn from 6–10 px, and half of the σ draws (not 70 %) kept under 3 px: 8 % of the pixels
# at 7–10 px (4 % before), 10 % at 5–7 px (5 %), 29 % under 1 px (43 %). It asks whether few examples
# keep 7–10 px at 6.5 px for 8.0 on `hdme-field-linear`'s own validation; from the release (model
# card, run m) they moved it by 0.1–0.2 px, so they are not what holds it there.
RECIPES["hdme-field-wide"] = dataclasses.replace(
    RECIPES["hdme-field-linear"], name="hdme-field-wide", field_scene_fraction=0.5, field_sigma_max=[6.0, 10.0],
    sigma={**RECIPES["hdme-field-linear"].sigma, "small_prob": 0.5})

# `hdme-field-linear` with JPEG down to quality 15 (40 before) on 40 % of the samples: messaging apps
# and web pages compress that hard, and below quality 40 the stage-8 release read blur low, the more
# the larger it was (its 8×8 block edges read as sharp ones: 7–10 px −15 % uncompressed, −28 % at
# quality 15 on hdme-field-wide scenes). Stage 9, trained on it, reads them −15 % and −22 % (model card).
RECIPES["hdme-field-jpeg"] = dataclasses.replace(RECIPES["hdme-field-linear"], name="hdme-field-jpeg",
                                                 jpeg_probability=0.4, jpeg_quality=[15, 95])

# `hdme-field-jpeg` with half of its field scenes covered by 24–80 small shapes resting on the field:
# σ then changes smoothly under dense occluding edges, as on foliage, gravel or a crowd over a ground
# plane. With sparse shapes on a field and dense shapes only at unrelated depths, dead leaves on a
# smooth surface read 7–10 px 25 % low even with a Gaussian PSF (the stage-8 release, model card).
RECIPES["hdme-field-dense"] = dataclasses.replace(RECIPES["hdme-field-jpeg"], name="hdme-field-dense",
                                                  dense_field_fraction=0.5)

# `hdme-field-dense` with σ drawn up to 14 px (field scenes reaching 3–14 px), past the network's
# 10 px: every release read large blur lower the nearer it came to 10 px, also on its own recipe
# (`hdme-field-wide` 7–8 px reading 6.4, 9–10 px 7.0), as a regression does at the edge of its
# labels; with labels to 14 px, 7–10 px lies inside them. The output is clamped to 10 px as before.
# Run q (model card) read 7–10 px 0.4–0.65 px higher on every away set, and small σ higher too.
RECIPES["hdme-field-beyond"] = dataclasses.replace(
    RECIPES["hdme-field-dense"], name="hdme-field-beyond", field_sigma_max=[3.0, 14.0],
    sigma={**RECIPES["hdme-field-dense"].sigma, "max": 14.0})
# `hdme-field-jpeg` with σ drawn up to 14 px as in `hdme-field-beyond`, without the dense field
# scenes: run r (those scenes alone) cost the test split more than run q (both together), and run q's
# large-σ gains came with its labels past 10 px. Run u (35 min on it) kept those gains and lost RTF
# 16 %, more than the dense fields did in as long.
RECIPES["hdme-field-past10"] = dataclasses.replace(
    RECIPES["hdme-field-jpeg"], name="hdme-field-past10", field_sigma_max=[3.0, 14.0],
    sigma={**RECIPES["hdme-field-jpeg"].sigma, "max": 14.0})
# `hdme-field-past10` with 40 % of the samples at a fifth to all of their contrast (log-uniform): the
# stage-9 release read lower contrast as more blur (a photo blurred 5 px: 4.7 px as it is, 5.4 at half
# its contrast, 6.5 at a quarter; dead leaves in focus 0.80 px, 0.95 at 0.4 of their contrast), so
# it partly read blur from how steep edges are instead of how wide; haze, flat light and dim scenes
# are that flat. Run t read flat scenes nearly as their originals, and lost RTF as run u did.
RECIPES["hdme-field-contrast"] = dataclasses.replace(
    RECIPES["hdme-field-past10"], name="hdme-field-contrast", low_contrast_probability=0.4)
# `hdme-field-jpeg` (labels to 10 px) with `hdme-field-contrast`'s flattened samples: run u put the
# RTF loss of run t on the labels past 10 px, so the flat samples alone may bring contrast
# invariance at the release's small-σ accuracy. Run v (85 min) brought it, lost RTF all the same
# (0.0585 → 0.0662) and read 5–10 px 0.15–0.3 px lower on the away sets.
RECIPES["hdme-field-flat"] = dataclasses.replace(
    RECIPES["hdme-field-jpeg"], name="hdme-field-flat", low_contrast_probability=0.4)

# `hdme-field-jpeg` with a rim-bright aperture (`brightrim`, twice as bright at the rim) on a tenth of
# the samples. No training PSF was brighter at its rim than at its centre, and on dead leaves the
# stage-9 release reads 7–10 px 23 % low under a Gaussian, 28 % under a disc or hexagon and 43 % under
# the held-out `ring` (four times as bright at the rim): a ring-blurred edge keeps a steep step at its
# rim, which the network reads as a sharper edge. Over-corrected lenses blur that way ("soap-bubble"
# bokeh). The ring stays out, so `away-leaves` now asks whether the reading carries past the rim
# brightness trained on. Run ac (model card) took 4 % off dead leaves under every PSF against its
# control, the ring's 7–10 px reading barely (4.68 → 4.84 px for 8.49); run ad, the same under `l1`,
# did not help the ring against its control at all. Not shipped.
RECIPES["hdme-field-rim"] = dataclasses.replace(
    RECIPES["hdme-field-jpeg"], name="hdme-field-rim",
    psf={"gaussian": 0.25, "disc": 0.2, "mixture": 0.15, "pentagon": 0.1, "octagon": 0.1, "dimrim": 0.1, "brightrim": 0.1})

# `hdme-field-jpeg` with 30 % of its samples enlarged 1.25–2.5× between the lens and the sensor's
# noise, their labels with them, as far as keeps them within 10 px. Every recipe draws its content
# at one scale, so wide blur always came with the same density of edges per blur width as narrow
# blur at a small factor of it; enlarged, a sample shows 5–10 px of blur on coarse content with
# fine grain, and the reading can no longer follow how many edges the frame holds. Runs ae and ag
# (this recipe without it, 85 min each) are its control. Run ah (model card) read 7–10 px 2–3 points
# higher away from the mix and lost RTF 16 % (0.0585 → 0.0680): not shipped.
RECIPES["hdme-field-zoom"] = dataclasses.replace(RECIPES["hdme-field-jpeg"], name="hdme-field-zoom",
                                                 zoom_probability=0.3)

# `hdme-field-zoom` with the camera's own blur (0.2–0.45 px) applied after the enlargement. In
# `hdme-field-zoom` it is enlarged with the lens blur, to 0.25–1.1 px, so the zoomed samples teach
# that a frame with fine grain can still be blurred by 1 px everywhere: run ah lost RTF, whose
# labels start at 0.3 px, where the zoomed samples had moved its floor. Run ai (model card) read
# RTF lower still (0.0771): the floor was not the cause. Not shipped.
RECIPES["hdme-field-zoom-sensor"] = dataclasses.replace(RECIPES["hdme-field-zoom"], name="hdme-field-zoom-sensor",
                                                        zoom_camera_blur_after=True)

# `hdme-field-zoom-sensor` with the blur of the enlargement itself in the labels. Bicubic enlargement
# spreads an edge that was in focus at the rendered scale by 0.55 px at 1.25× and 0.95 px at 2×
# (`enlargement_blur`), which no label of runs ah and ai held: their zoomed samples taught that about
# 1 px of visible blur on fine grain reads 0.3 px, and both read RTF's 1–3 px low (−11 %, −14 %; run
# ai, whose labels held less of that blur than run ah's enlarged camera floor, the lower).
# Run aj (model card, 58 min) got RTF's 1–3 px back (−5 %) and read in-focus content higher
# (0.63 px for 0.54 on RTF); run ak (85 min) kept RTF at the release's 0.058 and run ai's gains
# away from the mix, with in-focus pixels still reading high (test split 0.0259 → 0.0270): not shipped.
RECIPES["hdme-field-zoom-soft"] = dataclasses.replace(RECIPES["hdme-field-zoom-sensor"], name="hdme-field-zoom-soft",
                                                      zoom_blur_labelled=True)


def recipe_from_dict(data: dict, name: str):
    section = data.get("data", data)
    if section.get("kind") == "away":
        from hdme.train.synth.away import AwayRecipe

        return AwayRecipe(**{"name": name, **section})
    fields = {f.name for f in dataclasses.fields(SynthRecipe)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise HdmeError(f"{name}: unknown recipe keys {unknown} (known: {sorted(fields)})")
    return SynthRecipe(**{"name": name, **section})


def get_recipe(name_or_path: str, training: bool = False):
    """A preset ('paper', 'hdme'), an evaluation recipe away from the training mix ('away-leaves',
    'away-dof', 'away-large'; an ``AwayRecipe``) or a JSON file whose "data" key holds the recipe.
    ``training`` refuses the away recipes: a model trained on one would have nothing left to be
    measured against away from its mix."""
    from hdme.train.synth.away import AWAY_RECIPES

    if name_or_path in RECIPES:
        return dataclasses.replace(RECIPES[name_or_path])
    if name_or_path in AWAY_RECIPES:
        recipe = AWAY_RECIPES[name_or_path].replace()
    else:
        path = Path(name_or_path)
        if not path.is_file():
            names = list(RECIPES) if training else [*RECIPES, *AWAY_RECIPES]
            raise HdmeError(f"{name_or_path}: neither a recipe name ({', '.join(names)}) nor a JSON file")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise HdmeError(f"{path}: not a readable JSON recipe ({exc})") from None
        if not isinstance(data, dict):
            raise HdmeError(f"{path}: a recipe file holds a JSON object")
        recipe = recipe_from_dict(data, data.get("data", data).get("name", path.stem))
    if training and not isinstance(recipe, SynthRecipe):
        raise HdmeError(f"recipe '{name_or_path}' makes an evaluation set away from the training mix; "
                        "training on it would leave nothing to measure the model against")
    return recipe

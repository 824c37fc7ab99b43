"""Fixed-seed evaluation sets rendered from a recipe, cached on disk (the harness is hdme.evaluation).

Image i of a set is the i-th sample of a one-sample-per-batch ``SyntheticStream`` seeded with the
set's seed, so the first N images of a set are the same whatever N. Images are rounded to 8 bits, as
a photo would be, before any engine sees them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hdme import __version__
from hdme.io import atomic_path

CACHE_ENV = "HDME_CACHE_DIR"


def cache_dir() -> Path | None:
    """``$HDME_CACHE_DIR``/sets (no cache when it is set to an empty string), else ~/.cache/hdme/sets."""
    root = os.environ.get(CACHE_ENV)
    if root == "":
        return None
    return Path(root or Path.home() / ".cache" / "hdme") / "sets"


@functools.lru_cache(maxsize=1)
def synthesis_digest() -> str:
    """A hash of the synthesis code (this package's sources): a cached set is only reused while the
    code that rendered it is unchanged, whatever the version number says."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def rendering_libraries() -> dict[str, str]:
    """Versions of the libraries that draw and blur a set. The same recipe and seed render other
    pixels under another OpenCV (OpenCV 4.14 and 5.0 differ; the model card's "Evaluation" says by
    how much a score moves), so a set is only reused under the versions that rendered it."""
    import cv2
    import torch

    return {"opencv": cv2.__version__, "numpy": np.__version__, "torch": torch.__version__}


def _cache_file(recipe, size: int, seed: int) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    key = json.dumps({"recipe": recipe.to_dict(), "size": size, "seed": seed, "hdme": __version__,
                      "synthesis": synthesis_digest(), "libraries": rendering_libraries()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in recipe.name)
    return folder / f"{stem}-{size}-{seed}-{digest}.npz"


def render_set(recipe_name: str, size: int, count: int, seed: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8 [N, S, S, 3] RGB) and σ maps (float32 [N, S, S] px) of a recipe."""
    from hdme.train.synth import SyntheticStream, get_recipe

    recipe = get_recipe(recipe_name)
    cached = _cache_file(recipe, size, seed)
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as data:
                if len(data["images"]) >= count:
                    return data["images"][:count], data["sigmas"][:count]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: render it again and replace it
    stream = SyntheticStream(recipe, size=size, batch=1, seed=seed)
    images = np.empty((count, size, size, 3), np.uint8)
    sigmas = np.empty((count, size, size), np.float32)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"rendering {recipe.name} {size}²"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("render", total=count)
        for i in range(count):
            image, sigma = stream.next_batch()
            images[i] = np.clip(image[0].permute(1, 2, 0).numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
            sigmas[i] = sigma[0, 0].numpy()
            bar.advance(task)
    if cached is not None:
        with atomic_path(cached) as tmp:
            np.savez(tmp, images=images, sigmas=sigmas)
    return images, sigmas

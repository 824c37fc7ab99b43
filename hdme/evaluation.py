"""The evaluation harness: a fixed set, any engine, one scoring.

Training validation, the quantisation accuracy check and ``hdme bench accuracy`` all build their sets
with ``load_eval_set`` (or ``synthetic_set``) and score them with ``evaluate``, so the same set and the
same engine give the same numbers in all three. An engine is anything with ``predict(rgb) → σ px``.

Sets (``--dataset`` specs):
- ``NAME[:N][,size=S][,seed=K][,recipe=R]`` for the synthetic sets of ``SYNTHETIC_SETS``: N images
  rendered from a fixed seed (the first N of the set, whatever N), 8-bit like a photo, σ maps exact.
  ``synthetic`` is the training recipe's held-out split; the ``away-*`` sets are away from the
  training mix (see hdme.train.synth.away). Rendering needs the training stage (torch); rendered sets
  are cached on disk (``$HDME_CACHE_DIR``, default ``~/.cache/hdme``), keyed by everything that
  decides them.
- ``rtf``, ``cuhk``, ``dut`` (with an optional ``:N`` limit) and folders (``hdme.datasets``); a folder
  made by ``hdme data make`` is read from its ``test`` split.

Scores (``hdme.metrics``): per image, then the mean over images; and, where the truth is a σ map,
per bin of the true σ over all pixels (``SigmaBins``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from hdme.datasets import REAL_DATASETS, Sample, load_dataset
from hdme.errors import HdmeError
from hdme.metrics import SigmaBins, blur_detection_metrics, map_metrics, mean_metrics, rtf_metrics


class SigmaPredictor(Protocol):
    def predict(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SyntheticSet:
    """A fixed-seed synthetic set: ``count`` images of ``recipe`` (a name or JSON path) at size²."""

    name: str
    recipe: str
    size: int
    count: int
    seed: int

    @property
    def spec(self) -> str:
        """The ``--dataset`` spec that builds this set again."""
        base = SYNTHETIC_SETS.get(self.name)
        text = f"{self.name}:{self.count}"
        for key in ("size", "seed", "recipe"):
            if base is None or getattr(self, key) != getattr(base, key):
                text += f",{key}={getattr(self, key)}"
        return text

    @property
    def note(self) -> str:
        return f"recipe '{self.recipe}', {self.count} × {self.size}², seed {self.seed}"


SYNTHETIC_SETS = {
    "synthetic": SyntheticSet("synthetic", "hdme", 256, 100, 7_000_001),  # held out: a seed of its own, not one a training stream derives
    "away-leaves": SyntheticSet("away-leaves", "away-leaves", 256, 64, 7_100_001),
    "away-dof": SyntheticSet("away-dof", "away-dof", 256, 64, 7_200_001),
    "away-large": SyntheticSet("away-large", "away-large", 1024, 16, 7_300_001),
}


@dataclass
class EvalSet:
    name: str
    protocol: str  # "map" (σ maps), "rtf" (σ maps, DMENet protocol) or "mask" (in-focus masks)
    samples: list[Sample]
    note: str = ""


def split_limit(spec: str) -> tuple[str, int | None]:
    """``NAME:N`` → (NAME, N); a path that exists with a colon in its name is left whole."""
    name, sep, count = spec.rpartition(":")
    if sep and not Path(spec).exists():
        if count.isdigit():
            if int(count) < 1:
                raise HdmeError(f"dataset '{spec}': the count after ':' must be at least 1")
            return name, int(count)
        if name in (*REAL_DATASETS, *SYNTHETIC_SETS):
            raise HdmeError(f"dataset '{spec}': the count after ':' must be a whole number")
    return spec, None


def parse_synthetic(spec: str) -> SyntheticSet | None:
    """The synthetic set a spec names, or None when it names no synthetic set."""
    head, *options = spec.split(",")
    name, limit = split_limit(head)
    if name not in SYNTHETIC_SETS:
        return None
    changes: dict = {} if limit is None else {"count": limit}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or key not in ("size", "seed", "recipe"):
            raise HdmeError(f"dataset '{spec}': options are size=N, seed=N and recipe=NAME, not '{option}'")
        if key == "recipe":
            changes[key] = value.strip()
        elif value.strip().isdigit():
            changes[key] = int(value)
        else:
            raise HdmeError(f"dataset '{spec}': {key} must be a whole number")
    definition = replace(SYNTHETIC_SETS[name], **changes)
    if definition.size < 32:
        raise HdmeError(f"dataset '{spec}': size must be at least 32 px")
    return definition


def synthetic_set(definition: SyntheticSet) -> EvalSet:
    """Render (or read from the cache) a synthetic set; needs the training stage."""
    try:
        from hdme.train.synth.sets import render_set
    except ImportError as exc:
        raise HdmeError(
            f"dataset '{definition.name}' is rendered by the training stage ({exc}); install 'hdme[train]' "
            "or pass a set made by `hdme data make OUT` as a folder"
        ) from None
    images, sigmas = render_set(definition.recipe, definition.size, definition.count, definition.seed)
    samples = [Sample(f"{definition.name}_{i:04d}", rgb, sigma=sigma) for i, (rgb, sigma) in enumerate(zip(images, sigmas))]
    # Another seed, recipe, size or count is another set: its column and JSON key say which, and it
    # cannot pass for (or be dropped as a repeat of) the registered set beside it.
    name = definition.name if definition == SYNTHETIC_SETS[definition.name] else definition.spec
    return EvalSet(name, "map", samples, definition.note)


def load_eval_set(spec: str) -> EvalSet:
    """A set from its ``--dataset`` spec (see the module doc)."""
    definition = parse_synthetic(spec)
    if definition is not None:
        return synthetic_set(definition)
    name, limit = split_limit(spec)
    label = name if name in REAL_DATASETS else Path(name).name or name
    note = ""
    path = Path(name)
    if name not in REAL_DATASETS and (path / "manifest.json").is_file() and (path / "test").is_dir():
        path = path / "test"
        note = f"test split of {name}"
        name = str(path)
    if name not in REAL_DATASETS and not path.is_dir():
        raise HdmeError(f"dataset '{spec}': not one of {', '.join((*REAL_DATASETS, *SYNTHETIC_SETS))} and not a folder")
    samples = load_dataset(name, limit=limit)
    if name == "rtf":
        protocol = "rtf"
    else:
        kinds = {s.kind for s in samples}
        if len(kinds) > 1:
            raise HdmeError(f"dataset '{spec}' mixes σ maps and masks; split it into two folders")
        protocol = kinds.pop()
    return EvalSet(label, protocol, samples, note)


def score(protocol: str, pred: np.ndarray, sample: Sample) -> dict[str, float]:
    if protocol == "rtf":
        return rtf_metrics(pred, sample.sigma)
    if protocol == "map":
        return map_metrics(pred, sample.sigma)
    return blur_detection_metrics(pred, sample.in_focus)


def evaluate(predictor: SigmaPredictor, eval_set: EvalSet,
             on_prediction: Callable[[int, Sample, np.ndarray], None] | None = None) -> dict:
    """Run one engine over one set: ``mean`` metrics, ``per_image`` metrics (with ``ms``, the wall
    time of ``predict`` after one warm-up image), ``latency_ms`` and, for σ maps, ``sigma_bins``.
    ``on_prediction(index, sample, σ)`` sees every prediction."""
    if not eval_set.samples:
        raise HdmeError(f"{eval_set.name}: the set has no images to evaluate on")
    per_image = []
    bins = SigmaBins() if eval_set.protocol in ("map", "rtf") else None
    predictor.predict(eval_set.samples[0].image)  # warm-up: first-call costs are not per-image latency
    for i, sample in enumerate(eval_set.samples):
        start = time.perf_counter()
        pred = np.asarray(predictor.predict(sample.image), dtype=np.float32)
        ms = (time.perf_counter() - start) * 1e3
        if pred.shape != sample.image.shape[:2]:
            raise HdmeError(f"{sample.name}: the predictor returned {pred.shape}, not the image's {sample.image.shape[:2]}")
        metrics = score(eval_set.protocol, pred, sample)
        per_image.append({"name": sample.name, "ms": round(ms, 3), **{k: round(v, 6) for k, v in metrics.items()}})
        if bins is not None:
            bins.add(pred, sample.sigma)
        if on_prediction is not None:
            on_prediction(i, sample, pred)
    out = {
        "mean": mean_metrics([{k: v for k, v in e.items() if k not in ("name", "ms")} for e in per_image]),
        "latency_ms": float(np.mean([e["ms"] for e in per_image])),
        "per_image": per_image,
    }
    if bins is not None:
        out["sigma_bins"] = bins.rows()
    return out


def bin_table_rows(bins: list[dict]) -> list[list[str]]:
    """Bin rows as text cells: bin, share of pixels, true σ, predicted σ (and its ratio), MAE, share of the error."""
    rows = []
    for b in bins:
        if b["true"] is None:
            rows.append([f"{b['bin']} px", "0 %", "—", "—", "—", "—"])
            continue
        ratio = f" ({b['pred'] / b['true'] - 1:+.0%})" if b["true"] >= 0.5 else ""
        rows.append([f"{b['bin']} px", f"{100 * b['share']:.1f} %", f"{b['true']:.2f}", f"{b['pred']:.2f}{ratio}",
                     f"{b['mae']:.4f}", f"{100 * b['error_share']:.0f} %"])
    return rows


BIN_TABLE_HEADERS = ("true σ bin", "pixels", "mean true σ px", "mean predicted σ px", "MAE σ/10", "share of error")

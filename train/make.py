"""``hdme data make``: a synthetic defocus dataset on disk, resumable and parallel.

Layout: OUT/{train,val,test}/{image,defocus[,sharp]}/NAME.png (8-bit RGB; σ as 16-bit PNG ×1000),
or with ``flat`` only OUT/NAME.png images (a calibration set). OUT/manifest.json records the
arguments, per-sample map kind and Laplacian variance before/after shuffling, and skipped sources.
Every sample is drawn from its own seed (seed, index), so the result does not depend on the
number of workers or on interruptions. While a run is under way each finished sample leaves
OUT/.samples/NAME.json, written after its images; a rerun skips samples with a record (there or
in the manifest) and all their files. The records fold into the manifest at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hdme import __version__
from hdme.conventions import save_sigma_map
from hdme.errors import HdmeError
from hdme.images import write_image
from hdme.io import make_folder, remove_stale_temp_files, write_json

FORMAT_VERSION = 1
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
_RECORDS = ".samples"


@dataclass
class MakeArgs:
    out: str
    count: int
    size: int = 256
    source: str = "bundled"  # "bundled" | DIR | "coco:DIR"
    recipe: str = "paper"
    maps: list[str] | None = None
    noise: str | None = None
    shuffle: str | None = None
    save_sharp: bool = False
    flat: bool = False
    seed: int = 0
    workers: int = 1
    recipe_used: dict = field(default_factory=dict)

    def identity(self) -> dict:
        """What decides the content; a rerun into the same folder must agree on it."""
        keys = ("count", "size", "source", "seed", "save_sharp", "flat", "recipe_used")
        return {k: getattr(self, k) for k in keys}


def resolve_recipe(name: str, maps: list[str] | None, noise: str | None, shuffle: str | None):
    """The named recipe with the command-line overrides applied (maps given → equal weights)."""
    from hdme.train.synth import SynthRecipe, get_recipe

    recipe = get_recipe(name)
    if not isinstance(recipe, SynthRecipe) and (maps or noise is not None or shuffle is not None):
        raise HdmeError(f"recipe '{name}' draws its own scenes and noise; maps, noise and shuffle choices do not apply")
    changes = {}
    if maps:
        changes["maps"] = {m: 1.0 for m in maps}
    if noise is not None:
        changes["noise"] = noise
    if shuffle is not None:
        changes["shuffle"] = shuffle
    return recipe.replace(**changes) if changes else recipe


def open_source(spec: str):
    """'bundled', a folder, or 'coco:DIR' (COCO's train2017 folder inside DIR, or DIR itself)."""
    from hdme.train.synth.sources import FolderSource, as_source

    if spec == "bundled":
        return as_source(None)
    if spec.startswith("coco:"):
        root = Path(spec[len("coco:"):])
        return FolderSource(root / "train2017" if (root / "train2017").is_dir() else root)
    return FolderSource(spec)


def split_names(count: int, seed: int) -> list[tuple[str, str]]:
    """(name, split) for every index: a seeded 8:1:1 assignment."""
    order = np.random.default_rng([seed, 0x5B11]).permutation(count)
    n_val, n_test = (int(round(count * share)) for _, share in SPLITS[1:])
    n_train = count - n_val - n_test
    split_of = np.empty(count, dtype=object)
    split_of[order[:n_train]] = "train"
    split_of[order[n_train : n_train + n_val]] = "val"
    split_of[order[n_train + n_val :]] = "test"
    width = max(6, len(str(count - 1)))
    return [(f"{i:0{width}d}", str(split_of[i])) for i in range(count)]


def sample_paths(out: Path, name: str, split: str, flat: bool, save_sharp: bool) -> dict[str, Path]:
    if flat:
        return {"image": out / f"{name}.png"}
    paths = {"image": out / split / "image" / f"{name}.png", "defocus": out / split / "defocus" / f"{name}.png"}
    if save_sharp:
        paths["sharp"] = out / split / "sharp" / f"{name}.png"
    return paths


_worker: dict = {}


def _init_worker(args: MakeArgs) -> None:
    import torch

    from hdme.train.synth.recipe import recipe_from_dict

    torch.set_num_threads(1)  # parallelism comes from the worker processes
    _worker["args"] = args
    _worker["recipe"] = recipe_from_dict(args.recipe_used, args.recipe_used["name"])
    _worker["source"] = open_source(args.source)


def _to_uint8(img) -> np.ndarray:
    return (img.clamp(0.0, 1.0) * 255.0 + 0.5).byte().permute(1, 2, 0).cpu().numpy()


def _make_sample(task: tuple[int, str, str]) -> dict:
    """Draw, write and record sample ``index``; its record file is written last."""
    import torch

    from hdme.train.synth import laplacian_variance, synthesize

    index, name, split = task
    args: MakeArgs = _worker["args"]
    source = _worker["source"]
    seq = np.random.SeedSequence([args.seed, index])
    generator = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    batch = synthesize(_worker["recipe"], args.size, 1, np.random.default_rng(seq), generator, source)
    out = Path(args.out)
    paths = sample_paths(out, name, split, args.flat, args.save_sharp)
    write_image(paths["image"], _to_uint8(batch.image[0]))
    if "defocus" in paths:
        save_sigma_map(paths["defocus"], batch.sigma[0, 0].cpu().numpy())
    if "sharp" in paths:
        write_image(paths["sharp"], _to_uint8(batch.sharp[0]))
    sigma = batch.sigma[0, 0]
    record = {
        "name": name,
        "split": None if args.flat else split,
        "kind": batch.kinds[0],
        "psf": batch.psf[0],
        "laplacian_before": round(float(laplacian_variance(batch.source[0])), 3),
        "laplacian_after": round(float(laplacian_variance(batch.sharp[0])), 3),
        "sigma_min": round(float(sigma.min()), 4),
        "sigma_max": round(float(sigma.max()), 4),
        "sigma_mean": round(float(sigma.mean()), 4),
        "skipped_sources": {"corrupt": sorted(source.corrupt_paths), "small": sorted(source.small_paths)},
    }
    write_json(out / _RECORDS / f"{name}.json", record)
    return record


def _finished(record: dict | None, paths: dict[str, Path]) -> dict | None:
    """The record of a sample whose files are all in place, else None."""
    return record if record is not None and all(p.is_file() for p in paths.values()) else None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _previous_records(out: Path, args: MakeArgs) -> dict[str, dict]:
    """Records of an earlier run into ``out``, which must have used the same arguments. Records
    from a finished manifest carry its skipped-source lists."""
    identity = json.loads(json.dumps(args.identity()))
    manifest = _read_json(out / "manifest.json") or {}
    marker = _read_json(out / _RECORDS / "args.json")
    previous = manifest.get("identity") or marker
    if previous is not None and previous != identity:
        changed = sorted(k for k in identity if previous.get(k) != identity[k])
        raise HdmeError(f"{out} holds a dataset made with other arguments ({', '.join(changed)}); "
                        "choose another folder or repeat the same arguments to resume")
    if marker is None:
        write_json(out / _RECORDS / "args.json", identity)
    skipped = manifest.get("skipped_sources", {})
    carried = {"corrupt": skipped.get("corrupt_files", []), "small": skipped.get("small_files", [])}
    records = {r["name"]: {**r, "skipped_sources": carried} for r in manifest.get("samples", [])}
    for path in (out / _RECORDS).glob("*.json"):
        record = _read_json(path)
        if path.name != "args.json" and record is not None:
            records[record["name"]] = record
    return records


def make_dataset(args: MakeArgs, progress: bool = True) -> dict:
    """Build (or finish) the dataset described by ``args``; returns the manifest."""
    if args.count < 1:
        raise HdmeError("a dataset needs at least 1 image")
    if args.size < 16:
        raise HdmeError("images must be at least 16 px")
    recipe = resolve_recipe(args.recipe, args.maps, args.noise, args.shuffle)
    args.recipe_used = recipe.to_dict()
    open_source(args.source)  # fail early, in this process, on a bad --source
    out = Path(args.out)
    make_folder(out)
    remove_stale_temp_files(out)  # a killed run's half-written files must not pass for samples
    previous = _previous_records(out, args)

    names = split_names(args.count, args.seed)
    records: dict[str, dict] = {}
    todo = []
    for index, (name, split) in enumerate(names):
        done = _finished(previous.get(name), sample_paths(out, name, split, args.flat, args.save_sharp))
        if done is not None:
            records[name] = done
        else:
            todo.append((index, name, split))
    resumed = len(records)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("making samples"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("make", total=args.count, completed=resumed)
        if args.workers <= 1 or len(todo) <= 1:
            if todo:
                _init_worker(args)
            for record in map(_make_sample, todo):
                records[record["name"]] = record
                bar.advance(task)
        else:
            with ProcessPoolExecutor(max_workers=args.workers, initializer=_init_worker, initargs=(args,)) as pool:
                for record in pool.map(_make_sample, todo, chunksize=max(1, len(todo) // (8 * args.workers))):
                    records[record["name"]] = record
                    bar.advance(task)

    manifest = build_manifest(args, [records[name] for name, _ in names], resumed)
    write_json(out / "manifest.json", manifest)
    shutil.rmtree(out / _RECORDS, ignore_errors=True)  # folded into the manifest
    return manifest


def build_manifest(args: MakeArgs, records: list[dict], resumed: int) -> dict:
    corrupt = sorted({p for r in records for p in r["skipped_sources"]["corrupt"]})
    small = sorted({p for r in records for p in r["skipped_sources"]["small"]})
    names = ["all"] if args.flat else [name for name, _ in SPLITS]
    splits = {name: sum(1 for r in records if (r["split"] or "all") == name) for name in names}
    samples = [{k: v for k, v in r.items() if k != "skipped_sources"} for r in records]
    return {
        "format_version": FORMAT_VERSION,
        "hdme_version": __version__,
        "seed": args.seed,
        "identity": args.identity(),
        "args": {k: v for k, v in vars(args).items() if k not in ("recipe_used", "out")},
        "recipe": args.recipe_used,
        "layout": "flat" if args.flat else "{split}/{image,defocus" + (",sharp" if args.save_sharp else "") + "}/NAME.png",
        "sigma_png_scale": 1000,
        "splits": splits,
        "resumed_samples": resumed,
        "skipped_sources": {"corrupt": len(corrupt), "too_small": len(small), "corrupt_files": corrupt, "small_files": small},
        "samples": samples,
    }


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"count": int(arr.size), "min": float(arr.min()), "max": float(arr.max()),
            "mean": float(arr.mean()), "std": float(arr.std())}


def sharpness_rows(folders: list[str | os.PathLike]) -> list[tuple[str, dict]]:
    """Laplacian-variance statistics per folder, the analogue of the paper's Table 1.

    A folder made by ``hdme data make`` reports its sources before and after shuffling (from the
    manifest); any other folder reports the images found in it.
    """
    from hdme.images import list_images, read_image
    from hdme.train.synth import laplacian_variance

    rows = []
    for folder in map(Path, folders):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                samples = json.loads(manifest.read_text()).get("samples", [])
            except ValueError:
                raise HdmeError(f"{manifest}: not valid JSON") from None
            if samples and "laplacian_before" in samples[0]:
                rows.append((f"{folder} (before shuffle)", _stats([s["laplacian_before"] for s in samples])))
                rows.append((f"{folder} (after shuffle)", _stats([s["laplacian_after"] for s in samples])))
                continue
        paths = list_images(folder)
        if not paths:
            raise HdmeError(f"{folder}: no images and no manifest with sharpness records")
        rows.append((str(folder), _stats([laplacian_variance(read_image(p)) for p in paths])))
    return rows

"""Training batches: the synthetic stream (on the training device) or image/defocus pairs on disk.

Every batch is a pair (image [B,3,S,S] RGB float 0..1, σ [B,1,S,S] px). Randomness is derived
from (seed, rank, step) or (seed, epoch, index) rather than carried in hidden state, so a resumed
run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from hdme.conventions import load_sigma_map, output_to_sigma, rgb_to_input
from hdme.errors import HdmeError
from hdme.images import list_images, read_image, size_text

VAL_SEED = 20240601  # the fixed validation split never depends on the run's seed
MAP_SUFFIXES = (".png", ".npy")


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix-style), so nearby (seed, rank, k) never collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class SyntheticBatches:
    """Batches from ``SyntheticStream``. Chunk k (one stream batch) comes from a stream seeded with
    (seed, rank, k), so every rank draws different data and a resumed run needs no stream state.
    Opening a stream costs two generator seedings; the image sources are loaded once.

    ``echo`` > 1 renders a new chunk only every ``echo`` steps, so each sample is used ``echo``
    times on average: rendering a sample costs several training steps on a CPU. The samples of a
    step are drawn at random from the last ``pool`` chunks, each as a random crop (``synth_size`` →
    ``size``), flip and 90° turn, so a step never sees one chunk over and over (consecutive repeats
    of one batch make the model chase that batch). σ labels are unchanged by these transforms
    (the PSF is isotropic).

    Chunks are rendered, shuffle, Eq. 4 and noise batched, on ``device``. ``workers`` > 0 draws
    their CPU part (scenes, source crops, σ maps, random parameters) ahead, in that many CPU
    processes, while the model trains; 0 draws each when it is first needed. The chunks are the
    same either way on one device (a CUDA generator draws other numbers than a CPU one).
    """

    def __init__(self, recipe: Any, size: int, batch: int, seed: int, rank: int = 0,
                 device: str | torch.device = "cpu", sources: Any = None, echo: int = 1,
                 synth_size: int | None = None, pool: int = 16, workers: int = 0):
        from hdme.train.synth.sources import as_source

        if echo < 1 or pool < 1 or workers < 0 or (synth_size is not None and synth_size < size):
            raise ValueError("echo and pool must be ≥ 1, workers ≥ 0, synth_size ≥ size")
        self.recipe, self.size, self.batch, self.seed, self.rank = recipe, size, batch, seed, rank
        self.device = torch.device(device)
        self.echo, self.pool, self.workers = echo, pool, workers
        self.synth_size = synth_size or size
        self.source = as_source(sources)  # loaded once, shared by every step's stream
        self._chunks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ahead: Iterator | None = None
        self._ahead_next = 0  # the chunk index self._ahead yields next
        self.fresh_samples = 0  # samples rendered so far (each step reuses them ``echo`` times on average)

    def _chunk(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k not in self._chunks:
            if self.workers == 0:
                self._render(k, draw_chunk(self.recipe, self.synth_size, self.batch, self.seed, self.rank, k, self.source))
            else:
                self._fetch_ahead(k)
        return self._chunks[k]

    def _render(self, k: int, draw: Any) -> None:
        self._chunks[k] = render_chunk(self.recipe, draw, self.seed, self.rank, k, self.device)
        self.fresh_samples += self.batch

    def _fetch_ahead(self, k: int) -> None:
        # New chunks are asked for in increasing order and those passed on the way are kept, so
        # the loader only restarts after a resume.
        if self._ahead is None or k < self._ahead_next:
            # Spawned, not forked: OpenCV's thread pool does not survive a fork (setting its size
            # in a forked child hangs), and neither does a CUDA context.
            loader = DataLoader(_DrawStream(self, k), batch_size=None, num_workers=self.workers,
                                worker_init_fn=_init_drawing_worker, multiprocessing_context="spawn",
                                pin_memory=self.device.type == "cuda")
            self._ahead, self._ahead_next = iter(loader), k
        while self._ahead_next <= k:
            index, draw = next(self._ahead)
            self._ahead_next = index + 1
            self._render(index, draw)

    def close(self) -> None:
        """End the drawing processes now. They ignore SIGTERM (see ``_init_drawing_worker``), so at
        exit they would not yield to multiprocessing's terminate(); the loader's iterator, when
        dropped, tells them to stop after the chunk in hand."""
        self._ahead = None

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        newest = step // self.echo
        oldest = max(0, newest - self.pool + 1)
        for k in [k for k in self._chunks if k < oldest]:
            del self._chunks[k]
        if self.echo == 1 and self.synth_size == self.size:
            return self._chunk(newest)
        rng = np.random.default_rng(_mix(self.seed, self.rank, step, 1))
        images, sigmas = [], []
        for _ in range(self.batch):
            image, sigma = self._chunk(int(rng.integers(oldest, newest + 1)))
            i = int(rng.integers(self.batch))
            y, x = rng.integers(0, self.synth_size - self.size + 1, size=2)
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            pair = torch.cat([image[i], sigma[i]])[:, y:y + self.size, x:x + self.size]
            pair = torch.rot90(pair, turns, dims=(1, 2))
            if flip:
                pair = pair.flip(2)
            images.append(pair[:3])
            sigmas.append(pair[3:])
        return torch.stack(images).contiguous(), torch.stack(sigmas).contiguous()


def draw_chunk(recipe: Any, size: int, batch: int, seed: int, rank: int, k: int, source: Any) -> Any:
    """The CPU part (``draw_batch``) of chunk k of a run's synthetic stream: a function of (seed, rank, k)."""
    from hdme.train.synth.stream import draw_batch

    return draw_batch(recipe, size, batch, np.random.default_rng(_mix(seed, rank, k)), source)


def render_chunk(recipe: Any, draw: Any, seed: int, rank: int, k: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk k rendered from its draw on ``device``: a function of (seed, rank, k) and the device alone."""
    from hdme.train.synth.stream import render_draw

    generator = torch.Generator(device=device)
    generator.manual_seed(_mix(seed, rank, k))
    batch = render_draw(recipe, draw, generator, device)
    return batch.image, batch.sigma


class _DrawStream(IterableDataset):
    """The draws of chunks first, first + 1, … on the CPU; worker w of W takes every W-th, and the
    loader takes one from each worker in turn, so they arrive in order."""

    def __init__(self, batches: SyntheticBatches, first: int):
        self.args = (batches.recipe, batches.synth_size, batches.batch, batches.seed, batches.rank)
        self.source, self.first = batches.source, first

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        info = get_worker_info()  # always set: the stream is only read through worker processes
        for k in itertools.count(self.first + info.id, info.num_workers):
            yield k, draw_chunk(*self.args, k, self.source)


def _init_drawing_worker(_: int) -> None:
    cv2.setNumThreads(1)  # the parallelism comes from the worker processes
    # Ctrl-C (and a scheduler's SIGTERM) reach the whole process group: the training process decides
    # when to stop, after a step and with a checkpoint, and shuts its workers down itself; a worker
    # killed meanwhile would break the transfer of the chunk it was sending.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


class ModelPredictor:
    """A torch model as an engine of the evaluation harness (hdme.evaluation): RGB uint8 → σ px, one
    image at a time, the same operations as the runtime's torch backend with one pass, so both
    score a set alike. ``amp_dtype``: autocast on the device (as training uses on CUDA)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, amp_dtype: torch.dtype | None = None):
        self.model, self.device, self.amp_dtype = model, device, amp_dtype

    @torch.inference_mode()
    def predict(self, rgb: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(rgb_to_input(rgb)).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(x)
        return output_to_sigma(out.float().cpu().numpy()[0, 0])


def evaluate(model: torch.nn.Module, eval_set: Any, device: torch.device, amp_dtype: torch.dtype | None = None) -> dict:
    """The harness's ``evaluate`` of the model in eval mode (restored afterwards)."""
    from hdme.evaluation import evaluate as harness_evaluate

    was_training = model.training
    model.eval()
    try:
        return harness_evaluate(ModelPredictor(model, device, amp_dtype), eval_set)
    finally:
        model.train(was_training)


def find_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """(image, σ map) pairs of ``root/image`` and ``root/defocus`` (16-bit PNG ×1000 or .npy),
    the layout ``hdme data make`` writes per split."""
    root = Path(root)
    image_dir, map_dir = root / "image", root / "defocus"
    if not image_dir.is_dir() or not map_dir.is_dir():
        raise HdmeError(f"{root}: expected image/ and defocus/ folders (or train/ with them inside)")
    pairs = []
    for img in list_images(image_dir):
        for suffix in MAP_SUFFIXES:
            target = map_dir / f"{img.stem}{suffix}"
            if target.is_file():
                pairs.append((img, target))
                break
    if not pairs:
        raise HdmeError(f"{root}: no image/defocus pairs with matching names")
    return pairs


class PairDataset(Dataset):
    """Random ``size``² crops with flips of image/σ pairs; crop and flips depend on (seed, epoch,
    index) only. Images smaller than the crop are reflect-padded."""

    def __init__(self, root: str | Path, size: int, seed: int = 0):
        self.pairs = find_pairs(root)
        self.size = size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, map_path = self.pairs[index]
        image = read_image(img_path)
        sigma = load_sigma_map(map_path)
        if sigma.shape != image.shape[:2]:
            raise HdmeError(f"{map_path}: map is {size_text(*sigma.shape[:2])}, image is {size_text(*image.shape[:2])}")
        rng = np.random.default_rng(_mix(self.seed, self.epoch, index))
        s = self.size
        pad_h, pad_w = max(0, s - image.shape[0]), max(0, s - image.shape[1])
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
            sigma = np.pad(sigma, ((0, pad_h), (0, pad_w)), mode="reflect")
        y = int(rng.integers(0, image.shape[0] - s + 1))
        x = int(rng.integers(0, image.shape[1] - s + 1))
        image, sigma = image[y : y + s, x : x + s], sigma[y : y + s, x : x + s]
        if rng.random() < 0.5:
            image, sigma = image[:, ::-1], sigma[:, ::-1]
        if rng.random() < 0.5:
            image, sigma = image[::-1], sigma[::-1]
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        sigma_t = torch.from_numpy(np.ascontiguousarray(sigma, dtype=np.float32))[None]
        return image_t, sigma_t


class PairBatches:
    """Epochs over a ``PairDataset`` through a ``DistributedSampler`` (one replica without DDP)."""

    def __init__(self, root: str | Path, size: int, batch: int, seed: int, rank: int = 0, world: int = 1,
                 workers: int = 0):
        self.dataset = PairDataset(root, size, seed)
        self.sampler = DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.batch = batch
        self.workers = workers
        self.steps_per_epoch = len(self.sampler) // batch
        if self.steps_per_epoch == 0:
            raise HdmeError(f"{root}: {len(self.dataset)} pairs are fewer than one batch of {batch} per process")
        self._iter: Iterator | None = None
        self._step: int | None = None
        self.fresh_samples = 0  # samples read so far

    def _open(self, step: int) -> None:
        epoch, skip = divmod(step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        self.dataset.epoch = epoch
        indices = list(self.sampler)[skip * self.batch : self.steps_per_epoch * self.batch]
        loader = DataLoader(torch.utils.data.Subset(self.dataset, indices), batch_size=self.batch,
                            num_workers=self.workers, drop_last=True)
        self._iter = iter(loader)
        self._step = step

    def close(self) -> None:
        """End the loading processes now: the loader's iterator tells them to stop when dropped."""
        self._iter = self._step = None

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._step != step or step % self.steps_per_epoch == 0:
            self._open(step)
        image, sigma = next(self._iter)
        self._step = step + 1
        self.fresh_samples += len(image)
        return image, sigma


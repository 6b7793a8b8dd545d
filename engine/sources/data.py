"""Data: digits (bundled with scikit-learn), seeded synthetic images, or any torch Dataset.

Every source gives a fixed, seeded train/test split as plain tensors; evaluation batches are then
built once on the device and reused for every grid point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from hydra.utils import get_object

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.sources.losses import StreamedBatches, evaluate


@dataclass
class Split:
    """Inputs and integer labels of one split, on the CPU."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class DataBundle:
    """The train and test splits plus what a model needs to know about them."""

    train: Split
    test: Split
    input_shape: tuple[int, ...]
    num_classes: int


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured source and split it deterministically by cfg.seed and cfg.test_fraction."""
    if cfg.name == "digits":
        x, y = _digits()
    elif cfg.name == "synthetic":
        x, y = synthetic_images(tuple(cfg.shape), cfg.size, cfg.num_classes, cfg.seed)
    else:
        x, y = _custom(cfg)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, round(cfg.test_fraction * len(y)))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    num_classes = int(y.max()) + 1
    if cfg.name == "synthetic":
        num_classes = cfg.num_classes
    return DataBundle(
        Split(x[train_idx], y[train_idx]), Split(x[test_idx], y[test_idx]), tuple(x.shape[1:]), num_classes
    )


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.3) / 0.4, torch.tensor(bunch.target, dtype=torch.long)


def synthetic_images(
    shape: tuple[int, ...], size: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian samples labelled by a fixed random linear teacher, so the task is learnable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((size, *shape), generator=g)
    teacher = torch.randn(int(torch.Size(shape).numel()), num_classes, generator=g)
    return x, (x.flatten(1) @ teacher).argmax(1)


def _custom(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        dataset = get_object(cfg._target_)(**dict(cfg.kwargs))
    except Exception as err:
        raise UserError(f"data._target_={cfg._target_!r} could not be built ({type(err).__name__}: {err})") from None
    if len(dataset) < 2:
        raise UserError(f"data._target_={cfg._target_!r} has {len(dataset)} samples; need at least 2")
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in xs]), torch.as_tensor(ys, dtype=torch.long)


def subsample(split: Split, samples: int | None, seed: int = 0) -> Split:
    """The first `samples` of a seeded permutation of the split (all of it when samples is None)."""
    if samples is None or samples >= len(split.y):
        return split
    idx = torch.randperm(len(split.y), generator=torch.Generator().manual_seed(seed))[:samples]
    return Split(split.x[idx], split.y[idx])


def device_batches(split: Split, batch_size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut the split into batches once and move them to the device; reused for every grid point."""
    return [
        (split.x[i : i + batch_size].to(device), split.y[i : i + batch_size].to(device))
        for i in range(0, len(split.y), batch_size)
    ]


def choose_batch_size(
    model: torch.nn.Module, split: Split, device: torch.device, precision: str = "fp32", smallest: int = 32
) -> int:
    """The eval batch size with the least time per pass over the split: 32, 64, ... up to the whole split.

    Timed at theta* (one warm-up and one timed pass each); stops once a size is 20% slower than the best.
    """
    sizes = [b for b in (smallest << i for i in range(12)) if b < len(split.y)] + [len(split.y)]
    best_b, best_t = sizes[0], float("inf")
    for b in sizes:
        batches = device_batches(split, b, device)
        evaluate(model, batches, precision)
        start = time.perf_counter()
        evaluate(model, batches, precision)
        seconds = time.perf_counter() - start
        if seconds < best_t:
            best_b, best_t = b, seconds
        elif seconds > 1.2 * best_t:
            break
    return best_b


def eval_batches(
    split: Split, batch_size: int, device: torch.device, cache: str = "auto", memory_gb: float = 2.0,
) -> list[tuple[torch.Tensor, torch.Tensor]] | StreamedBatches:
    """The eval batches as the config asks: cached on the device (auto: when they take under half the memory
    budget), or streamed from pinned host memory for eval sets that do not fit."""
    fits = split.x.numel() * split.x.element_size() <= memory_gb * 2**30 / 2
    if cache == "device" or (cache == "auto" and (fits or device.type == "cpu")):
        return device_batches(split, batch_size, device)
    return StreamedBatches(device_batches(split, batch_size, torch.device("cpu")), device)

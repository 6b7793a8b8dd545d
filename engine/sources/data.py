"""Data: digits (bundled with scikit-learn), seeded synthetic images, or any torch Dataset.

Every source gives a fixed, seeded train/test split as plain tensors; evaluation batches are then
built once on the device and reused for every grid point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from hydra.utils import get_object

from engine.config.schema import DataConfig
from engine.core.errors import UserError


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
        dataset = get_object(cast(str, cfg._target_))(**dict(cfg.kwargs))  # set: DataConfig checks it for custom
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

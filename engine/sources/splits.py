"""Splits: the samples of a train or eval set, held whole as tensors (any batch structure) or read from a Dataset
through a DataLoader in a fixed order; the seeded split of sources without their own, and seeded subsamples."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.sources.structure import Batch, cat, items_in, nbytes, take, tensors_of


@dataclass
class Split:
    """The samples of one split held whole on the CPU: inputs x (a tensor or any batch structure) and labels y
    (None when the labels, if any, are inside x, as in a dict batch)."""

    x: Batch
    y: torch.Tensor | None = None

    def __len__(self) -> int:
        return items_in(self.x)

    def batch(self, start: int, stop: int) -> Batch:
        """Samples start..stop as one batch: (x, y), or x alone when y is None."""
        x = take(self.x, slice(start, stop))
        return x if self.y is None else (x, self.y[start:stop])

    def select(self, index: torch.Tensor) -> Split:
        """The samples at index, in that order."""
        return Split(take(self.x, index), None if self.y is None else self.y[index])


@dataclass
class DatasetSplit:
    """The samples of one split read from a torch Dataset (at `indices`, in that order) through a DataLoader: for
    sets too large to hold whole, and for sources whose items must be decoded (image files)."""

    dataset: Dataset
    indices: list[int] | None = None  # None: every item in order
    collate: Callable[[list[Any]], Batch] = field(default=default_collate)

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(cast(Any, self.dataset))

    def select(self, index: torch.Tensor) -> DatasetSplit:
        """The samples at index (positions in this split), in that order."""
        mine = self.indices if self.indices is not None else range(len(self))
        return DatasetSplit(self.dataset, [mine[int(i)] for i in index], self.collate)

    def loader(self, batch_size: int, workers: int = 0) -> DataLoader:
        """Batches in the split's fixed order (no shuffling), decoded by `workers` processes."""
        data = self.dataset if self.indices is None else Subset(self.dataset, self.indices)
        return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=self.collate)

    def batches(self, batch_size: int, workers: int = 0) -> Iterator[Batch]:
        """The split's batches, read afresh."""
        yield from self.loader(batch_size, workers)

    def approx_bytes(self) -> int:
        """Memory the whole split would take as tensors, from its first item."""
        return nbytes(self.collate([self.dataset[self.indices[0] if self.indices else 0]])) * len(self)

    def materialize(self, batch_size: int = 256, workers: int = 0) -> Split:
        """The whole split read once and held as tensors (same values as reading it batch by batch)."""
        whole = cat(list(self.batches(batch_size, workers)))
        if isinstance(whole, tuple | list) and len(whole) == 2 and isinstance(whole[1], torch.Tensor):
            return Split(whole[0], whole[1])
        return Split(whole)


AnySplit = Split | DatasetSplit


@dataclass
class DataBundle:
    """The train and test splits plus what a model needs to know about them (None where a source cannot say)."""

    train: AnySplit
    test: AnySplit
    input_shape: tuple[int, ...]
    num_classes: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # what a source tells the model builder (a tokenizer's size)


def held(split: AnySplit, batch_size: int = 256, workers: int = 0) -> Split:
    """The split as tensors (read once when it comes from a Dataset)."""
    return split if isinstance(split, Split) else split.materialize(batch_size, workers)


def split_fingerprint(split: AnySplit, batch_size: int = 256, workers: int = 0) -> str:
    """A sha256 of every value of every sample and label, in order, with each tensor's dtype and shape, so that
    one changed sample or label gives another fingerprint. A Dataset is read once for it; a held split hashes
    the same as the Dataset it was read from."""
    parts: Iterable[Batch] = [split.x if split.y is None else (split.x, split.y)] if isinstance(split, Split) \
        else split.batches(batch_size, workers)
    leaves: list[Any] = []
    shapes: list[tuple[str, tuple[int, ...], int]] = []
    for part in parts:
        tensors = tensors_of(part)
        if not leaves:
            leaves = [hashlib.sha256() for _ in tensors]
            shapes = [(str(t.dtype), tuple(t.shape[1:]), 0) for t in tensors]
        if len(tensors) != len(leaves):
            raise UserError("the eval set's batches change structure from batch to batch; give batches of one "
                            "structure")
        for k, t in enumerate(tensors):
            flat = t.detach().cpu().contiguous().reshape(-1)
            leaves[k].update(flat.view(torch.uint8).numpy().data)
            dtype, rest, rows = shapes[k]
            shapes[k] = (dtype, rest, rows + (int(t.shape[0]) if t.dim() else 1))
    whole = hashlib.sha256(repr(shapes).encode())
    for leaf in leaves:
        whole.update(leaf.digest())
    return whole.hexdigest()[:16]


def seeded_split(whole: AnySplit, cfg: DataConfig) -> tuple[AnySplit, AnySplit]:
    """(train, test) of a source without a split of its own: a cfg.seed permutation, cfg.test_fraction held out."""
    train, test = seeded_order(whole, cfg)
    return whole.select(train), whole.select(test)


def seeded_order(whole: AnySplit, cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of (train, test) in a source without its own split: a cfg.seed permutation, test_fraction held out."""
    perm = torch.randperm(len(whole), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, round(cfg.test_fraction * len(whole)))
    return perm[n_test:], perm[:n_test]


def float_inputs(items: list[Any]) -> Batch:
    """default_collate, with (input, label) items' inputs as float32 and integer labels as int64 (as the engine's
    own sources give them)."""
    batch = default_collate(items)
    if isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        x, y = batch
        y = y.long() if isinstance(y, torch.Tensor) and not y.is_floating_point() else y
        return (x.float(), y)
    return batch


def subsample(split: AnySplit, samples: int | None, seed: int = 0) -> AnySplit:
    """The first `samples` of a seeded permutation of the split (all of it when samples is None)."""
    if samples is None or samples >= len(split):
        return split
    return split.select(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:samples])

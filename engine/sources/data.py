"""Data: digits (bundled with scikit-learn), seeded synthetic images, torchvision's and text sources
(engine/sources/vision.py, engine/sources/text.py), or any torch Dataset or DataLoader.

A split is either held whole as tensors (inputs and labels, or any batch structure such as a dict of token ids) or,
for sets too large for memory, read from its Dataset through a DataLoader in a fixed order. Sources with an
official split keep it; the others get a fixed, seeded train/test split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from hydra.utils import get_object
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.sources.structure import Batch, cat, items_in, nbytes, take


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


def load_data(cfg: DataConfig, model_path: str | None = None) -> DataBundle:
    """Load the configured source: its official split if it has one, else split by cfg.seed and cfg.test_fraction.

    model_path (model.path of an hf model) is where data=text finds its tokenizer when data.tokenizer is not set.
    """
    if cfg.name in ("cifar10", "cifar100", "imagefolder"):
        from engine.sources.vision import load_vision_data  # torchvision: an optional extra

        return load_vision_data(cfg)
    if cfg.name == "text":
        from engine.sources.text import load_text_data  # tokenizers/transformers: an optional extra

        return load_text_data(cfg, model_path)
    if cfg.name == "custom":
        return _custom(cfg)
    if cfg.name == "digits":
        x, y = _digits()
    else:
        x, y = synthetic_images(tuple(cfg.shape), cfg.size, cfg.num_classes, cfg.seed)
    num_classes = cfg.num_classes if cfg.name == "synthetic" else int(y.max()) + 1
    train, test = seeded_split(Split(x, y), cfg)
    return DataBundle(train, test, tuple(x.shape[1:]), num_classes)


def seeded_split(whole: AnySplit, cfg: DataConfig) -> tuple[AnySplit, AnySplit]:
    """(train, test) of a source without a split of its own: a cfg.seed permutation, cfg.test_fraction held out."""
    perm = torch.randperm(len(whole), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, round(cfg.test_fraction * len(whole)))
    return whole.select(perm[n_test:]), whole.select(perm[:n_test])


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


def _custom(cfg: DataConfig) -> DataBundle:
    """data._target_ built with data.kwargs: a Dataset (seeded split), a DataLoader (its dataset and collate_fn), or
    a dict {"train": ..., "test": ...} of either (the source's own split)."""
    try:
        made = get_object(cast(str, cfg._target_))(**dict(cfg.kwargs))  # set: DataConfig checks it for custom
    except Exception as err:
        raise UserError(f"data._target_={cfg._target_!r} could not be built ({type(err).__name__}: {err})") from None
    if isinstance(made, dict) and {"train", "test"} <= set(made):
        train, test = dataset_split(made["train"], cfg), dataset_split(made["test"], cfg)
    else:
        train, test = seeded_split(dataset_split(made, cfg), cfg)
    first = test.collate([test.dataset[test.indices[0] if test.indices else 0]])
    x0 = first[0] if isinstance(first, tuple | list) else first
    labels = first[1] if isinstance(first, tuple | list) and len(first) > 1 else None
    classes = int(held_labels(made).max()) + 1 if labels is not None and not labels.is_floating_point() else None
    shape = tuple(x0.shape[1:]) if isinstance(x0, torch.Tensor) else ()
    return DataBundle(train, test, shape, classes)


def held_labels(made: Any) -> torch.Tensor:
    """Every label of a custom source that yields (input, label) items (for the number of classes)."""
    data = made["train"] if isinstance(made, dict) else made
    data = data.dataset if isinstance(data, DataLoader) else data
    return torch.as_tensor([int(data[i][1]) for i in range(len(data))])


def dataset_split(made: Any, cfg: DataConfig) -> DatasetSplit:
    """A custom source's Dataset (or a DataLoader's dataset and collate_fn) as a split; at least 2 items."""
    if isinstance(made, DataLoader):
        split = DatasetSplit(made.dataset, None, made.collate_fn or default_collate)
    elif hasattr(made, "__getitem__") and hasattr(made, "__len__"):
        split = DatasetSplit(made, None, float_inputs)
    else:
        raise UserError(f"data._target_={cfg._target_!r} gave a {type(made).__name__}; return a torch Dataset, a "
                        "DataLoader, or a dict with train and test ones")
    if len(split) < 2:
        raise UserError(f"data._target_={cfg._target_!r} has {len(split)} samples; need at least 2")
    return split


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

"""Data: digits (bundled with scikit-learn), seeded synthetic images, torchvision's and text sources
(engine/sources/vision.py, engine/sources/text.py), or any torch Dataset or DataLoader.

A split is either held whole as tensors (inputs and labels, or any batch structure such as a dict of token ids) or,
for sets too large for memory, read from its Dataset through a DataLoader in a fixed order. Sources with an
official split keep it; the others get a fixed, seeded train/test split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from engine.config.schema import DataConfig
from engine.core.errors import UserError
from engine.core.imports import import_object
from engine.sources.splits import AnySplit, DataBundle, DatasetSplit, Split, float_inputs, seeded_order, seeded_split


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


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    return (x - 0.3) / 0.4, torch.tensor(target, dtype=torch.long)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digit images and their labels, as sklearn.datasets.load_digits returns them: read from the
    digits.csv.gz that scikit-learn ships, found without importing scikit-learn (whose import, scipy.stats included,
    took about 2 s of every run's start here), else through load_digits."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


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
    factory = import_object(cast(str, cfg._target_), "data._target_")  # set: DataConfig checks it for custom
    try:
        made = factory(**dict(cfg.kwargs))
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise UserError(f"data._target_={cfg._target_!r} could not be built ({type(err).__name__}: {first})") from None
    train: AnySplit
    if isinstance(made, dict) and {"train", "test"} <= set(made):
        train, test = dataset_split(made["train"], cfg), dataset_split(made["test"], cfg)
    else:
        whole = dataset_split(made, cfg)
        train, test = seeded_split(whole, cfg)[0], whole.select(seeded_order(whole, cfg)[1])
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
    return torch.as_tensor([int(data[i][1]) for i in range(len(cast(Any, data)))])


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

"""engine.sources.splits and batches: splits of any batch structure, seeded splits and subsamples, and an eval set
streamed from its Dataset through a DataLoader giving bit for bit the batches (and the store) of the cached path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from engine.app.landscape import run_landscape
from engine.config.schema import DataConfig
from engine.sources.batches import LoaderBatches, device_batches, eval_batches
from engine.sources.splits import DatasetSplit, Split, held, seeded_split, subsample
from engine.store.read import read_surface
from helpers import make_cfg
from loss_fixtures import DictRegression, Regression

CPU = torch.device("cpu")


class Items(Dataset):
    """Items of a nested structure: a dict holding a tensor, a tuple of tensors and an integer label."""

    def __init__(self, n: int = 23) -> None:
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.c = torch.randn(n, 3, generator=g), torch.randn(n, 2, 2, generator=g), torch.arange(n)

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"a": self.a[i], "pair": (self.b[i], self.b[i].sum()), "labels": self.c[i]}


def flat(batch: Any) -> list[torch.Tensor]:
    """Every tensor of a structure, in a fixed order."""
    if isinstance(batch, dict):
        return [t for k in sorted(batch) for t in flat(batch[k])]
    if isinstance(batch, tuple | list):
        return [t for v in batch for t in flat(v)]
    return [batch]


def same_batches(a: Any, b: Any) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        fx, fy = flat(x), flat(y)
        assert len(fx) == len(fy)
        for s, t in zip(fx, fy, strict=True):
            assert s.dtype == t.dtype and torch.equal(s, t)


def test_split_of_a_nested_structure_selects_every_tensor_together() -> None:
    items = Items()
    whole = held(DatasetSplit(items))
    index = torch.tensor([5, 0, 17])
    chosen = whole.select(index)
    assert torch.equal(chosen.x["a"], items.a[index]) and torch.equal(chosen.x["labels"], items.c[index])
    assert torch.equal(chosen.x["pair"][0], items.b[index]) and len(chosen) == 3
    assert torch.equal(whole.batch(4, 9)["pair"][1], items.b[4:9].sum((1, 2)))


def test_dataset_split_selection_composes_and_materializes_in_order() -> None:
    items = Items()
    split = DatasetSplit(items).select(torch.tensor([9, 3, 20, 1])).select(torch.tensor([2, 0]))
    assert split.indices == [20, 9]
    assert torch.equal(held(split).x["a"], items.a[[20, 9]])


def test_seeded_split_partitions_and_subsample_is_a_fixed_prefix() -> None:
    whole = Split(torch.arange(50).float()[:, None], torch.arange(50))
    train, test = seeded_split(whole, DataConfig(test_fraction=0.2, seed=3))
    assert len(test) == 10 and sorted([*train.y.tolist(), *test.y.tolist()]) == list(range(50))
    again = seeded_split(whole, DataConfig(test_fraction=0.2, seed=3))[1]
    assert torch.equal(test.y, again.y)
    assert not torch.equal(test.y, seeded_split(whole, DataConfig(test_fraction=0.2, seed=4))[1].y)
    small, smaller = subsample(whole, 20, seed=1), subsample(whole, 20, seed=1)
    assert torch.equal(small.y, smaller.y) and subsample(whole, None) is whole and subsample(whole, 99) is whole


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("source", [Items, DictRegression, Regression])
def test_streamed_batches_equal_the_cached_ones_bit_for_bit(source: type, workers: int) -> None:
    """LoaderBatches (read afresh through a DataLoader, any workers) yields the cached path's batches exactly, in
    order, on every pass, including a short last batch."""
    split = DatasetSplit(source()).select(torch.randperm(23, generator=torch.Generator().manual_seed(0))[:21])
    cached = device_batches(held(split), 4, CPU)
    streamed = eval_batches(split, 4, CPU, workers=workers)
    assert isinstance(streamed, LoaderBatches) and len(streamed) == len(cached) == 6
    same_batches(streamed, cached)
    same_batches(streamed, cached)  # a second pass reads the same
    same_batches([streamed[0]], cached[:1])


def test_a_streamed_eval_set_gives_the_cached_store_bit_for_bit(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose eval set exceeds eval.memory_gb reads it through a DataLoader each pass; its store equals the
    cached run's, bit for bit (same trained weights from one checkpoint). The input_products rewrite needs inputs
    held in memory, so a streamed run goes without it; both runs here leave it out, to compare bits."""
    common = ["model=mlp", "model.hidden=[8]", "model.num_classes=2", "data=custom",
              "data._target_=loss_fixtures.Regression", "loss=mse", "grid.resolution=[3,3]", "eval.samples=30",
              "eval.batch_size=8", "eval.points_per_pass=1", "summary.epsilon=null", "eval.workers=0",
              "eval.rewrites=[fold_batchnorm,in_place,transposed_head]"]
    cfg, resolved = make_cfg(tmp_path, *common, "name=trained")
    trained = run_landscape(cfg, resolved, log=False)
    checkpoint = f"model.checkpoint={trained.run_dir / 'checkpoints' / 'final.pt'}"
    passes = []
    read = LoaderBatches.__iter__
    monkeypatch.setattr(LoaderBatches, "__iter__", lambda self: (passes.append(1), read(self))[1])
    stores = {}
    for name, memory in (("cached", "2.0"), ("streamed", "1e-7")):
        cfg, resolved = make_cfg(tmp_path, *common, checkpoint, f"eval.memory_gb={memory}", f"name={name}")
        stores[name] = read_surface(run_landscape(cfg, resolved, log=False).store)
        assert (len(passes) >= 9) == (name == "streamed")  # a DataLoader pass per grid point, only when streamed
    assert stores["cached"].done.all() and stores["streamed"].done.all()
    np.testing.assert_array_equal(stores["cached"].metrics["loss"], stores["streamed"].metrics["loss"])

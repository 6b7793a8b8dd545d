"""A store is never reused for other data: the Python API's store identity and data=custom's config see every value
of every sample and label, so a label-noise study (the same call with some labels changed) gets a fresh surface, and
a changed file under data=custom is refused in one line, then recomputed with store.overwrite=true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import engine
from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.sources.splits import DatasetSplit, Split, split_fingerprint
from engine.store.read import read_surface
from helpers import make_cfg, trained_model
from loss_fixtures import regression_tensors

QUICK = {"grid.resolution": (3, 3), "grid.tile": (3, 3), "grid.preview": 0, "eval.points_per_pass": 1,
         "eval.batch_size": 250, "plot.enabled": False, "summary.epsilon": None, "summary.adaptive_radius": None,
         "eval.progress": False}


def test_the_fingerprint_sees_every_value_and_not_the_batching() -> None:
    """One changed label or input value anywhere gives another fingerprint; the same values held whole or read from
    a Dataset in any batch size give the same one; dtype and shape count too."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, 5, generator=g), torch.randint(0, 4, (300,), generator=g)
    base = split_fingerprint(Split(x, y))
    assert split_fingerprint(DatasetSplit(TensorDataset(x, y)), batch_size=7) == base
    seen = {base}
    for i in (0, 150, 299):
        y2, x2 = y.clone(), x.clone()
        y2[i] = (y2[i] + 1) % 4
        x2[i, 1, 3] = torch.nextafter(x2[i, 1, 3], torch.tensor(np.inf))
        seen |= {split_fingerprint(Split(x, y2)), split_fingerprint(Split(x2, y))}
    seen |= {split_fingerprint(Split(x.double(), y)), split_fingerprint(Split(x.reshape(300, 10), y))}
    assert len(seen) == 9


def test_label_noise_through_the_api_gets_a_fresh_surface(tmp_path: Path) -> None:
    """engine.landscape(model, (X, Y)), then the same call with labels 100..899 of 1000 changed: the second surface
    is the changed set's (its centre equals a float64 cross-entropy over it), not the first call's store reopened;
    the first call, repeated, still resumes its own store."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1000, 16, generator=g), torch.randint(0, 5, (1000,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    noisy = y.clone()
    noisy[100:900] = torch.randint(0, 5, (800,), generator=g)
    settings = {**QUICK, "out_dir": tmp_path}
    first = engine.landscape(model, (x, y), **settings)
    second = engine.landscape(model, (x, noisy), **settings)
    again = engine.landscape(model, (x, y), **settings)
    assert second.attrs["store"] != first.attrs["store"] and again.attrs["store"] == first.attrs["store"]
    with torch.no_grad():
        logits = model.double()(x.double())
        model.float()
    for result, labels in ((first, y), (second, noisy), (again, y)):
        want = nn.functional.cross_entropy(logits, labels).item()
        assert float(result["loss"].values[1, 1]) == pytest.approx(want, rel=1e-5)


def _write(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    np.savez(path, x=x.numpy(), y=y.numpy())


def test_a_changed_sample_under_data_custom_is_refused_then_recomputed(tmp_path: Path) -> None:
    """data=custom reading an .npz file: the same command after one eval sample changed in the file is refused in one
    line naming the data fingerprint (never the old surface); with store.overwrite=true its centre equals a float64
    mean squared error over the changed eval set."""
    x, y = regression_tensors(160, seed=3)
    data = tmp_path / "regression.npz"
    _write(data, x, y)
    common = ["model=mlp", "model.hidden=[8]", "model.num_classes=2", "data=custom",
              "data._target_=loss_fixtures.FileRegression", f"data.kwargs.path={data}", "loss=mse",
              "grid.resolution=[3,3]", "grid.tile=[3,3]", "grid.preview=0", "eval.batch_size=16",
              "eval.points_per_pass=1", "summary.epsilon=null", "summary.adaptive_radius=null", "name=custom"]
    cfg, resolved = make_cfg(tmp_path, *common)
    before = run_landscape(cfg, resolved, log=False)
    checkpoint = f"model.checkpoint={before.run_dir / 'checkpoints' / 'final.pt'}"
    old_loss = read_surface(before.store).metrics["loss"]
    model, split = trained_model(cfg, before)
    held = split.materialize() if isinstance(split, DatasetSplit) else split
    middle = split.indices[len(split) // 2] if isinstance(split, DatasetSplit) else None
    assert middle is not None
    x[middle] += 1.0
    _write(data, x, y)
    cfg, resolved = make_cfg(tmp_path, *common, checkpoint)
    with pytest.raises(UserError, match=r"computed on other data \(data fingerprint \w+, now \w+\)") as refused:
        run_landscape(cfg, resolved, log=False)
    assert "\n" not in str(refused.value)
    assert np.array_equal(read_surface(before.store).metrics["loss"], old_loss)  # left as it was
    cfg, resolved = make_cfg(tmp_path, *common, checkpoint, "store.overwrite=true")
    after = run_landscape(cfg, resolved, log=False)
    inputs, targets = held.x.clone(), held.y
    inputs[len(split) // 2] += 1.0
    with torch.no_grad():
        want = (model.double()(inputs.double()) - targets.double()).pow(2).mean(1).mean().item()
    assert after.summary["center"]["loss"] == pytest.approx(want, rel=1e-5)
    assert before.summary["center"]["loss"] != pytest.approx(want, rel=1e-5)

"""Standard errors through the sweep (engine.sweep.runner.make_runner + engine.sweep.tiles.sweep_tiles into real
stores): the loss and accuracy stored are bit for bit those of the kernels before standard errors, on the in-place
(rewritten) path and K points per vmap pass; K = 1 and K = 3 give the same standard errors; a store made before them
resumes without them; a custom loss without per-item values stores none and its summary says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stderr_fixtures import OLD_METRICS, OldCrossEntropy
from torch import nn

from engine.config.schema import GridConfig
from engine.core.dist import DistEnv
from engine.directions.vectors import perturbed, random_directions
from engine.figures.draw import draw
from engine.sources.batches import device_batches
from engine.sources.data import load_data
from engine.sources.loss_kinds import CustomLoss
from engine.sources.losses import CROSS_ENTROPY, Loss
from engine.sources.models import build_model
from engine.sources.splits import subsample
from engine.store.assemble import NO_ERROR_BARS, summarize
from engine.store.grid import make_levels
from engine.store.layout import StoreSpec, open_store
from engine.store.read import read_surface
from engine.store.tiles import write_tile
from engine.sweep.runner import make_runner
from engine.sweep.tiles import compute_tile, sweep_tiles
from helpers import make_cfg

CPU = DistEnv(0, 1, 0, torch.device("cpu"))
GRID = GridConfig(resolution=[5, 4], x=[-1.0, 1.0], y=[-1.0, 1.0], tile=[2, 2], preview=0)
STDERRS = ("loss_stderr", "accuracy_stderr")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A narrow ResNet-8 (random weights) on 300 digits in batches of 260 and 40 (both cross-entropy kernels), its
    filter-normalized directions, and a config per K."""
    out = tmp_path_factory.mktemp("stderr")
    cfgs = {k: make_cfg(out, f"eval.points_per_pass={k}", "eval.batch_size=260")[0] for k in (1, 3)}
    cfg = cfgs[1]
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.num_classes).eval()
    split = subsample(data.test, 300, cfg.data.seed)
    target = perturbed(model, "weights")
    dirs = random_directions(target.theta, 2, 0, "filter", "biasbn")
    return {"cfgs": cfgs, "model": model, "batches": device_batches(split, 260, CPU.device), "target": target,
            "dirs": dirs, "out": out}


def sweep_store(d: dict[str, Any], path: Path, k: int, loss: Loss, tiles: int | None = None) -> Path:
    """A store of GRID swept with `loss` at K = k (all tiles, or only the first `tiles` of them)."""
    target, levels = d["target"], make_levels(GRID)
    runner = make_runner(d["cfgs"][k], d["model"], target.names, target.tensors, d["dirs"], d["batches"], CPU, None,
                         loss=loss)
    spec = StoreSpec({"model": {"name": "resnet8"}, "data": {"name": "digits"}, "direction": {"norm": "filter"}},
                     levels, target.names, [tuple(t.shape) for t in target.tensors], d["dirs"], "f00d", loss.metrics)
    root = open_store(path, spec)
    if tiles is None:
        sweep_tiles(runner, levels, root, progress=False, env=CPU)
    else:
        plan = levels[""]
        with runner.perturber.active():
            for tile in plan.tiles()[:tiles]:
                write_tile(root, plan, tile, compute_tile(runner, plan, tile))
    return path


@pytest.fixture(scope="module")
def stores(digits: dict[str, Any]) -> dict[tuple[str, int], Path]:
    """Stores swept by the loss now and by the loss before standard errors, at K = 1 and K = 3."""
    out = digits["out"]
    return {(name, k): sweep_store(digits, out / f"{name}{k}.zarr", k, loss)
            for name, loss in (("new", CROSS_ENTROPY), ("old", OldCrossEntropy())) for k in (1, 3)}


@pytest.mark.parametrize("k", [1, 3])
def test_stored_loss_and_accuracy_are_bitwise_those_before_standard_errors(stores: dict[Any, Path], k: int) -> None:
    new, old = read_surface(stores["new", k]), read_surface(stores["old", k])
    assert list(old.metrics) == list(OLD_METRICS) and list(new.metrics) == [*OLD_METRICS, *STDERRS]
    assert new.done.all() and old.done.all()
    for metric in OLD_METRICS:
        np.testing.assert_array_equal(new.metrics[metric], old.metrics[metric])
    for name in STDERRS:
        values = new.metrics[name]
        assert np.isfinite(values).all() and (values > 0).all(), name


def test_in_place_and_vmap_k3_give_the_same_standard_errors(stores: dict[Any, Path]) -> None:
    one, three = read_surface(stores["new", 1]), read_surface(stores["new", 3])
    for metric in (*OLD_METRICS, *STDERRS):
        np.testing.assert_allclose(three.metrics[metric], one.metrics[metric], rtol=2e-5, atol=1e-7, err_msg=metric)


def test_a_store_made_before_standard_errors_resumes_draws_and_says_it_has_none(
        digits: dict[str, Any], stores: dict[Any, Path], tmp_path: Path) -> None:
    """Half swept by the loss before standard errors, then reopened and finished by the loss now: no error, no
    standard-error arrays (none half-filled), the loss the full store's bit for bit; the summary says there are no
    error bars and the figures draw."""
    path = sweep_store(digits, tmp_path / "before.zarr", 1, OldCrossEntropy(), tiles=3)
    assert not read_surface(path).done.all()
    sweep_store(digits, path, 1, CROSS_ENTROPY)
    resumed, full = read_surface(path), read_surface(stores["new", 1])
    assert resumed.done.all() and list(resumed.metrics) == list(OLD_METRICS)
    np.testing.assert_array_equal(resumed.metrics["loss"], full.metrics["loss"])
    summary = summarize(resumed)
    assert summary["error_bars"] == NO_ERROR_BARS and summary["basin_depth_se"] is None
    assert summary["minimum_vs_centre"] is None
    drawn = {p.name for p in draw(path, tmp_path / "figures")}
    assert "heatmap.png" in drawn and "loss_stderr_heatmap.png" not in drawn


def regression(model: nn.Module, batch: Any, squares: bool = False) -> tuple[Any, ...]:
    """A custom loss: summed squared error and absolute error per item, with their summed squares when asked."""
    x, y = batch
    err = (model(x) - y).pow(2).mean(1)
    out = (err.sum(), torch.ones_like(err).sum(), {"abs": err.sqrt().sum()})
    return (*out, {"loss": err.pow(2).sum()}) if squares else out


@pytest.mark.parametrize("squares", [False, True])
def test_custom_loss_stores_standard_errors_only_with_per_item_squares(tmp_path: Path, squares: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)) for n in (30, 20)]
    loss = CustomLoss(regression, "tests.regression", {"squares": squares})
    loss.probe(model, batches[0])
    target = perturbed(model, "weights")
    d = {"cfgs": {1: make_cfg(tmp_path, "eval.points_per_pass=1")[0]}, "model": model, "batches": batches,
         "target": target, "dirs": random_directions(target.theta, 2, 0, "filter", "biasbn")}
    surface = read_surface(sweep_store(d, tmp_path / "custom.zarr", 1, loss))
    summary = summarize(surface)
    if squares:
        assert list(surface.metrics) == ["loss", "abs", "loss_stderr"]
        assert np.isfinite(surface.metrics["loss_stderr"]).all()
        assert summary["error_bars"]["metrics"] == ["loss"] and summary["minimum_vs_centre"]["stderr"] > 0
    else:
        assert list(surface.metrics) == ["loss", "abs"]
        assert summary["error_bars"] == NO_ERROR_BARS and summary["minimum_vs_centre"] is None

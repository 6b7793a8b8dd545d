"""Whole sweeps (run_landscape, in this process) checked against independent references: the naive per-point loop,
float64 rewrites off, K points per vmap pass against the in-place path, streamed batches, BatchNorm statistics in
log space, BatchNorm recalibration against a recalibration from scratch; a model vmap cannot run still completes;
line and non-square stores, directions reused from a store, far points stored non-finite and drawn."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from engine.app.landscape import run_landscape
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import load_data
from engine.sources.models import build_model
from engine.sources.splits import Split, subsample
from engine.store.read import read_directions, read_surface
from helpers import make_cfg, trained_model


def naive_point(model, names, directions, coords, split, batch_size=17):
    """The seed document's method: deepcopy, load_state_dict of theta* + sum c_k d_k, loop over batches."""
    state = copy.deepcopy(model.state_dict())
    for name in names:
        state[name] = state[name] + sum(c * d[name] for c, d in zip(coords, directions))
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    other.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(split.y), batch_size):
            x, y = split.x[i : i + batch_size], split.y[i : i + batch_size]
            out = other(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    return loss / len(split.y), correct / len(split.y)


@pytest.fixture(scope="module")
def uneven_run(trained_run, tmp_path_factory):
    """trained_run's weights swept on 70 eval samples in batches of 32: a short last batch of 6, as most real
    runs have (an even split cannot tell a sum over samples from a mean of per-batch means)."""
    _, _, trained = trained_run
    cfg, resolved = make_cfg(tmp_path_factory.mktemp("uneven"), "name=uneven", "eval.samples=70",
                             f"model.checkpoint={trained.run_dir / 'checkpoints' / 'final.pt'}", "summary.epsilon=null")
    return cfg, resolved, run_landscape(cfg, resolved, log=False)


def test_surface_matches_naive_reference(uneven_run):
    """The K-points (vmap) sweep equals the naive per-point loop, short last batch included."""
    cfg, _, result = uneven_run
    assert cfg.eval.samples % cfg.eval.batch_size != 0
    assert "K=4" in (result.run_dir / "logs" / "rank0.log").read_text()  # the vmap path, not the in-place one
    model, split = trained_model(cfg, result)
    surface = read_surface(result.store)
    directions = read_directions(result.store)
    names = list(directions[0])
    for i, j in [(0, 0), (2, 3), (5, 4), (3, 1)]:
        coords = (surface.coords[0][i], surface.coords[1][j])
        loss, acc = naive_point(model, names, directions, coords, split)
        assert surface.metrics["loss"][i, j] == pytest.approx(loss, rel=2e-5, abs=1e-6)
        assert surface.metrics["accuracy"][i, j] == pytest.approx(acc, abs=1e-6)


def test_line_and_nonsquare_plane_stores(tmp_path):
    for overrides, shape in [(["grid=line", "grid.resolution=[9]", "grid.tile=[4]"], (9,)),
                             (["grid.resolution=[5,3]", "grid.tile=[2,2]", "grid.y=[-0.5,0.5]"], (5, 3))]:
        cfg, resolved = make_cfg(tmp_path, *overrides, f"name=r{len(shape)}")
        result = run_landscape(cfg, resolved, log=False)
        surface = read_surface(result.store)
        assert surface.metrics["loss"].shape == shape and surface.done.all()
        assert np.isfinite(surface.metrics["loss"]).all()
        assert [len(c) for c in surface.coords] == list(shape)
        if len(shape) == 2:
            assert surface.coords[1].tolist() == [-0.5, 0.0, 0.5]
        ds = xr.open_zarr(result.store, consolidated=False)
        assert list(ds["loss"].dims) == surface.attrs["dims"]
        np.testing.assert_allclose(ds["loss"].coords["x"].values, surface.coords[0])


def test_directions_file_roundtrip_through_store(trained_run, tmp_path):
    _, _, result = trained_run
    ckpt = result.run_dir / "checkpoints" / "final.pt"
    again, resolved = make_cfg(tmp_path, "direction=file", f"direction.path={result.store}",
                               f"model.checkpoint={ckpt}", "name=reuse")
    reused = run_landscape(again, resolved, log=False)
    np.testing.assert_allclose(read_surface(reused.store).metrics["loss"],
                               read_surface(result.store).metrics["loss"], rtol=1e-6)


def test_far_points_store_nonfinite_and_draw(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "grid.x=[-1e12,1e12]", "grid.resolution=[5,3]", "plot.enabled=true",
                             "plot.formats=[png]")
    result = run_landscape(cfg, resolved, log=False)
    loss = read_surface(result.store).metrics["loss"]
    assert read_surface(result.store).done.all() and not np.isfinite(loss[0]).any()
    assert np.isfinite(loss[2, 1]) and result.summary["nonfinite_points"] + int(np.isnan(loss).sum()) > 0
    assert {p.name for p in result.figures} >= {"contourf.png", "heatmap.png", "surface3d.png"}


# 70 eval samples in batches of 32: a short last batch, so a mean of per-batch means cannot pass for the mean
UNEVEN_GRID = ["grid.resolution=[7,4]", "grid.tile=[3,3]", "grid.y=[-0.5,0.7]", "eval.samples=70",
        "summary.epsilon=null"]


def _loss(tmp_path, name, *overrides):
    cfg, resolved = make_cfg(tmp_path, *UNEVEN_GRID, f"name={name}", *overrides)
    result = run_landscape(cfg, resolved, log=False)
    surface = read_surface(result.store)
    return surface.metrics["loss"], surface.metrics["accuracy"]


@pytest.mark.parametrize("model", [["model=resnet8"], ["model=mlp", "model.hidden=[32,32]"],
                                   ["model=resnet8", "direction.over=states", "direction.ignore=none",
                                    "grid.x=[-0.05,0.05]", "grid.y=[-0.05,0.05]"]],
                         ids=["batchnorm", "mlp", "states"])
def test_k_points_per_pass_match_in_place(model, tmp_path):
    loss1, acc1 = _loss(tmp_path, "k1", *model, "eval.points_per_pass=1")
    loss5, acc5 = _loss(tmp_path, "k5", *model, "eval.points_per_pass=5")
    np.testing.assert_allclose(loss5, loss1, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(acc5, acc1, atol=1.0 / 70 + 1e-9)  # at most one flipped near-tie prediction
    assert np.isfinite(loss1).all() and loss1.shape == (7, 4)
    assert "K=5" in (tmp_path / "k5" / "logs" / "rank0.log").read_text()  # the vmap path did run


def test_auto_k_and_streamed_batches(tmp_path):
    loss1, _ = _loss(tmp_path, "k1", "eval.points_per_pass=1")
    auto, _ = _loss(tmp_path, "auto", "eval.points_per_pass=null", "eval.cache=stream")
    np.testing.assert_allclose(auto, loss1, rtol=2e-5, atol=1e-6)
    log = (tmp_path / "auto" / "logs" / "rank0.log").read_text()
    assert "points per pass: K=" in log


def test_model_vmap_cannot_run_still_completes_a_run(tmp_path):
    """The run part of sweep/test_vectorized.py's fallback: a custom model vmap cannot run, asked for 8 points per
    pass, falls back to the in-place path and fills a finite store."""
    loss, _ = _loss(tmp_path, "custom", "model=custom", "model._target_=helpers.DataDependent",
                    "eval.points_per_pass=8")
    assert np.isfinite(loss).all()


def test_rewrites_off_gives_the_same_store(tmp_path):
    grid = ["grid.resolution=[5,4]", "grid.tile=[3,3]", "eval.points_per_pass=1", "model=mlp", "model.hidden=[16]"]
    stores = {}
    for name, rewrites in (("on", "eval.rewrites=[fold_batchnorm,in_place,input_products,transposed_head]"),
                           ("off", "eval.rewrites=[]")):
        cfg, resolved = make_cfg(tmp_path, *grid, f"name={name}", rewrites)
        stores[name] = read_surface(run_landscape(cfg, resolved, log=False).store).metrics["loss"]
    np.testing.assert_allclose(stores["on"], stores["off"], rtol=1e-5)
    log = (tmp_path / "on" / "logs" / "rank0.log").read_text()
    assert "input-layer products on, transposed head on" in log


@pytest.mark.parametrize("k", [1, 4])
def test_states_sweep_over_the_unit_square_is_finite(tmp_path, k):
    """Li et al.'s states directions with BatchNorm statistics normalized (ignore=none): finite everywhere, in place
    and under vmap (a variance direction added linearly made the variance negative at |coordinate| ~ 1)."""
    cfg, resolved = make_cfg(tmp_path, "direction.over=states", "direction.ignore=none", "summary.epsilon=null",
                             f"eval.points_per_pass={k}", "grid.x=[-1,1]", "grid.y=[-1,1]")
    surface = read_surface(run_landscape(cfg, resolved, log=False).store)
    assert surface.done.all() and np.isfinite(surface.metrics["loss"]).all()
    assert surface.attrs["log_space"] and all(n.endswith("running_var") for n in surface.attrs["log_space"])


def test_recalibrating_run_uses_the_in_place_path(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "name=recal", "eval.recalibrate_bn=true", "eval.recalibrate_samples=64",
                             "grid.resolution=[3,3]", "eval.points_per_pass=4")
    result = run_landscape(cfg, resolved, log=False)
    plain_cfg, plain_resolved = make_cfg(tmp_path, "name=recal", "grid.resolution=[3,3]", "store.path=" +
                                         str(tmp_path / "plain.zarr"), f"model.checkpoint={tmp_path}/recal/"
                                         "checkpoints/final.pt")
    plain = run_landscape(plain_cfg, plain_resolved, log=False)
    recal_loss = read_surface(result.store).metrics["loss"]
    assert np.isfinite(recal_loss).all()
    assert not np.allclose(recal_loss, read_surface(plain.store).metrics["loss"])  # statistics did change
    assert "K=1" in (tmp_path / "recal" / "logs" / "rank0.log").read_text()


def recalibrated_point(model: nn.Module, directions: list[dict[str, torch.Tensor]], coords: tuple[float, ...],
                       train: Split, batch_size: int, split: Split) -> tuple[float, float]:
    """Loss and accuracy on split of a copy of model moved to theta* + sum c_k d_k, its BatchNorm statistics reset
    and averaged (momentum=None) over train-mode passes on train in batches of batch_size."""
    other = copy.deepcopy(model)
    state = other.state_dict()
    for name in directions[0]:
        state[name] = state[name] + sum(c * d[name] for c, d in zip(coords, directions))
    other.load_state_dict(state)
    for m in other.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    other.train()
    with torch.no_grad():
        for i in range(0, len(train.y), batch_size):
            other(train.x[i : i + batch_size])
        other.eval()
        out = other(split.x)
    return F.cross_entropy(out, split.y).item(), (out.argmax(1) == split.y).float().mean().item()


def test_recalibrated_run_matches_an_independent_recalibration(trained_run, tmp_path):
    """Every point of a 3x3 plane (the first one swept and those away from theta*) equals its own recalibration
    on the training split: recalibrating on the eval split, or only once, fails here."""
    _, _, trained = trained_run
    ckpt = trained.run_dir / "checkpoints" / "final.pt"
    cfg, resolved = make_cfg(tmp_path, "name=recal", f"model.checkpoint={ckpt}", "eval.recalibrate_bn=true",
                             "eval.recalibrate_samples=100", "grid.resolution=[3,3]", "grid.preview=0",
                             "summary.epsilon=null")
    result = run_landscape(cfg, resolved, log=False)
    surface = read_surface(result.store)
    assert surface.done.all()
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, ckpt)
    train = subsample(data.train, cfg.eval.recalibrate_samples, cfg.data.seed)
    split = subsample(data.test, cfg.eval.samples, cfg.data.seed)
    assert cfg.eval.batch_size is not None and len(train.y) % cfg.eval.batch_size  # a short last batch too
    directions = read_directions(result.store)
    for i, j in [(0, 0), (2, 0), (0, 2), (2, 2), (1, 2), (1, 1)]:
        coords = (float(surface.coords[0][i]), float(surface.coords[1][j]))
        loss, acc = recalibrated_point(model, directions, coords, train, cfg.eval.batch_size, split)
        assert surface.metrics["loss"][i, j] == pytest.approx(loss, rel=2e-5, abs=1e-6), (i, j)
        assert surface.metrics["accuracy"][i, j] == pytest.approx(acc, abs=1.0 / len(split.y) + 1e-6), (i, j)

"""The sweep against a naive reference, bitwise restore of theta*, grid shapes, resume and store refusal."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
import zarr

from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import load_data, subsample
from engine.sources.models import build_model
from engine.store.grid import make_plan
from engine.store.read import read_directions, read_surface
from engine.sweep.perturb import Perturber
from helpers import make_cfg


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


def _trained_model(cfg, result):
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, cfg.model.checkpoint or result.run_dir / "checkpoints" / "final.pt")
    return model.eval(), subsample(data.test, cfg.eval.samples, cfg.data.seed)


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
    model, split = _trained_model(cfg, result)
    surface = read_surface(result.store)
    directions = read_directions(result.store)
    names = list(directions[0])
    for i, j in [(0, 0), (2, 3), (5, 4), (3, 1)]:
        coords = (surface.coords[0][i], surface.coords[1][j])
        loss, acc = naive_point(model, names, directions, coords, split)
        assert surface.metrics["loss"][i, j] == pytest.approx(loss, rel=2e-5, abs=1e-6)
        assert surface.metrics["accuracy"][i, j] == pytest.approx(acc, abs=1e-6)


def test_theta_star_restored_bitwise(trained_run):
    cfg, _, result = trained_run
    model, _ = _trained_model(cfg, result)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [t for _, t in perturbed_tensors(model, "states")]
    dirs = random_directions([t.detach() for t in tensors], 2, 0, "filter", "none")
    with Perturber(tensors, dirs).active() as p:
        p.set((0.37, -0.81))
        assert not torch.equal(tensors[0], before[next(iter(before))])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("resolution", "tile", "tile_grid"),
    [([7], [3], (3,)), ([6], [6], (1,)), ([5, 8], [2, 3], (3, 3)), ([4, 4], [4, 4], (1, 1)), ([1, 3], [2, 2], (1, 2))],
)
def test_plan_shapes_and_coordinates(resolution, tile, tile_grid, tmp_path):
    cfg, _ = make_cfg(tmp_path, f"grid.resolution={resolution}", f"grid.tile={tile}", "grid.x=[-2,1]", "grid.y=[0,3]")
    plan = make_plan(cfg.grid)
    assert plan.shape == tuple(resolution) and plan.tile_grid == tile_grid
    expected_x = np.linspace(-2, 1, resolution[0]) if resolution[0] > 1 else np.array([-0.5])
    np.testing.assert_allclose(plan.coords[0], expected_x)
    covered = np.zeros(plan.shape, dtype=int)
    for t in plan.tiles():
        covered[plan.tile_slices(t)] += 1
        assert len(plan.tile_points(t)) == np.prod(plan.tile_shape(t))
    assert (covered == 1).all()


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


def test_resume_recomputes_only_cleared_tile(tmp_path):
    cfg, resolved = make_cfg(tmp_path)
    first = run_landscape(cfg, resolved, log=False)
    assert len(first.tiles_computed) == 4
    reference = read_surface(first.store).metrics["loss"].copy()
    root = zarr.open_group(first.store, mode="r+")
    root["loss"][4:6, 0:4] = -1.0  # data of tile (1, 0) damaged, and its flag cleared
    root["done"][1:2, 0:1] = 0
    second = run_landscape(cfg, resolved, log=False)
    assert second.tiles_computed == [("", (1, 0))]
    np.testing.assert_array_equal(read_surface(first.store).metrics["loss"], reference)
    assert run_landscape(cfg, resolved, log=False).tiles_computed == []


def test_store_of_another_config_is_refused_then_overwritten(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "name=x")
    first = run_landscape(cfg, resolved, log=False)
    before = read_surface(first.store).metrics["loss"].copy()
    other, other_resolved = make_cfg(tmp_path, "name=x", "direction.seed=99")
    with pytest.raises(UserError, match=r"different config \(direction.seed: 123 -> 99\)"):
        run_landscape(other, other_resolved, log=False)
    np.testing.assert_array_equal(read_surface(first.store).metrics["loss"], before)
    forced, forced_resolved = make_cfg(tmp_path, "name=x", "direction.seed=99", "store.overwrite=true")
    again = run_landscape(forced, forced_resolved, log=False)
    assert len(again.tiles_computed) == 4
    assert read_surface(again.store).attrs["config"]["direction"]["seed"] == 99


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

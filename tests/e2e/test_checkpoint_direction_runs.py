"""Directions from checkpoints through the whole run.

- Interpolation endpoints equal each model's own numbers exactly, with BatchNorm statistics interpolated (the default).
- The plane through three models puts each, with its own BatchNorm statistics, at its stored coordinates.
- The PCA plane of the run's own trajectory is stored with its projection.
- The sharpness numbers land in summary.json.
- Bad inputs (another architecture, too few checkpoints, normalized checkpoint directions) give one line each.
- The PCA plane on two torchrun ranks equals the one-process store.

(Recalibrated BatchNorm statistics restored: sources/test_batchnorm.py; the interpolation landing on B bit for bit:
sweep/test_perturb.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from engine.app.landscape import run_landscape
from engine.directions.vectors import log_space, perturbed_tensors
from engine.sources.batches import device_batches
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import load_data
from engine.sources.losses import evaluate
from engine.sources.models import CifarResNet, build_model
from engine.sources.splits import Split, subsample
from engine.store.read import read_directions, read_surface
from engine.sweep.perturb import Perturber
from helpers import ENV, GRID, SAME_PATH, TINY, assert_same_store, make_cfg, run_cli, torchrun

LINE = ["grid=line", "grid.resolution=[5]", "grid.x=[-0.5,1.5]", "grid.tile=[3]", "grid.preview=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-8 (width 4) trained 3 epochs: epoch_001..003.pt and final.pt."""
    out = tmp_path_factory.mktemp("ckpt")
    cfg, resolved = make_cfg(out, "train.epochs=3", "name=base", "grid.resolution=[3,3]")
    run_landscape(cfg, resolved, log=False)
    return out, out / "base" / "checkpoints"


def _eval_batches(cfg) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The run's eval batches (channels_last, eval.batch_size)."""
    data = load_data(cfg.data)
    split = subsample(data.test, cfg.eval.samples, cfg.data.seed)
    split = Split(split.x.contiguous(memory_format=torch.channels_last), split.y)
    return device_batches(split, cfg.eval.batch_size, torch.device("cpu"))


def _own_numbers(cfg, checkpoint) -> dict[str, float]:
    """A model's own loss and accuracy, evaluated as a run does (channels_last, eval batches of 32)."""
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, checkpoint)
    model = model.eval().to(memory_format=torch.channels_last)
    return evaluate(model, _eval_batches(cfg))


def test_interpolation_endpoints_are_the_models_own_numbers(trained):
    out, ckpt = trained
    a, b = ckpt / "epoch_001.pt", ckpt / "final.pt"
    cfg, resolved = make_cfg(out, *LINE, "name=interp", f"model.checkpoint={a}", "direction=interpolation",
                             f"direction.checkpoints=[{b}]", "eval.rewrites=[]")  # the default over=states
    result = run_landscape(cfg, resolved, log=False)
    surface = read_surface(result.store)
    np.testing.assert_array_equal(surface.coords[0], [-0.5, 0.0, 0.5, 1.0, 1.5])
    for index, checkpoint in ((1, a), (3, b)):
        own = _own_numbers(cfg, checkpoint)
        assert surface.metrics["loss"][index] == np.float32(own["loss"])  # exactly, not approximately
        assert surface.metrics["accuracy"][index] == np.float32(own["accuracy"])
    assert surface.metrics["loss"][1] != surface.metrics["loss"][3]
    assert surface.attrs["markers"] == {"A": [0.0], "B": [1.0]}
    summary = json.loads((out / "interp" / "summary.json").read_text())
    assert summary["sharpness"]["epsilon"]["sharpness"] >= 0 and summary["sharpness"]["surface"] is not None
    fast_cfg, fast_resolved = make_cfg(out, *LINE, "name=interp_fast", f"model.checkpoint={a}",
                                       "direction=interpolation", f"direction.checkpoints=[{b}]")
    fast = read_surface(run_landscape(fast_cfg, fast_resolved, log=False).store)  # the graph rewrites on
    np.testing.assert_allclose(fast.metrics["loss"], surface.metrics["loss"], rtol=1e-5)


def test_plane_through_three_models_puts_each_at_its_coordinates(trained):
    out, ckpt = trained
    a, b, c = ckpt / "final.pt", ckpt / "epoch_001.pt", ckpt / "epoch_002.pt"
    cfg, resolved = make_cfg(out, "name=plane", f"model.checkpoint={a}", "direction=plane",
                             f"direction.checkpoints=[{b},{c}]", "grid.resolution=[3,3]")
    result = run_landscape(cfg, resolved, log=False)
    markers = read_surface(result.store).attrs["markers"]
    assert markers["A"] == [0.0, 0.0] and markers["B"][1] == 0.0 and markers["B"][0] > 0
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, a)
    names, tensors = zip(*perturbed_tensors(model, "states"))  # the default: BatchNorm statistics too
    stored = read_directions(result.store)
    assert set(stored[0]) == set(names)
    logged = log_space(model, list(names))
    perturber = Perturber(list(tensors), [[d[n] for n in names] for d in stored], logged=logged)
    model.eval().to(memory_format=torch.channels_last)
    for name, path in (("B", b), ("C", c)):
        target = torch.load(path, weights_only=True)["state_dict"]
        with perturber.active():
            perturber.set(tuple(markers[name]))
            worst = max(((t - target[n]).abs() / (target[n].abs() + 1e-3)).max().item() for n, t in zip(names, tensors))
            here = evaluate(model, _eval_batches(cfg))
        assert worst < 1e-4, f"{name} is not at its stored coordinates ({worst})"
        assert here["loss"] == pytest.approx(_own_numbers(cfg, path)["loss"], rel=1e-5), name


def test_pca_of_the_run_trajectory(trained):
    out, ckpt = trained
    cfg, resolved = make_cfg(out, "name=pca", f"model.checkpoint={ckpt / 'final.pt'}", "direction=pca",
                             f"direction.trajectory={ckpt}", "grid.resolution=[3,3]", "plot.enabled=true",
                             "plot.formats=[png]")
    result = run_landscape(cfg, resolved, log=False)
    surface = read_surface(result.store)
    explained = surface.attrs["explained_variance"]
    assert explained[0] >= explained[1] > 0 and sum(explained) == pytest.approx(1.0)  # 3 checkpoints: 2 components
    assert "% of the variance" in surface.attrs["axis_labels"][0]
    coords = np.asarray(zarr.open_group(result.store, mode="r")["trajectory/coords"][...])
    assert coords.shape == (3, 2) and np.allclose(coords[-1], 0.0, atol=1e-5)  # epoch_003 is the final model
    d0, d1 = (torch.cat([t.reshape(-1) for t in d.values()]) for d in read_directions(result.store))
    assert abs(torch.dot(d0, d1).item()) < 1e-5 and d0.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert any(p.name == "contour.png" for p in result.figures)


def test_bad_checkpoint_inputs_give_one_line(trained, tmp_path):
    _, ckpt = trained
    other = tmp_path / "wide.pt"
    torch.save({"state_dict": CifarResNet(8, 10, 1, 8, shortcut=True).state_dict()}, other)
    base = ["model.width=4", "train.epochs=1", "eval.samples=64", "plot.enabled=false", "eval.progress=false",
            f"out_dir={tmp_path}", f"model.checkpoint={ckpt / 'final.pt'}"]
    cases = [
        ([*base, "grid=line", "direction=interpolation", f"direction.checkpoints=[{other}]"], "does not fit model"),
        ([*base, "direction=pca", f"direction.trajectory={tmp_path / 'few'}"], "needs at least 3 checkpoints"),
        ([*base, "direction.kind=plane", f"direction.checkpoints=[{other},{other}]"], "set direction.norm=none"),
    ]
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "epoch_001.pt").write_bytes((ckpt / "epoch_001.pt").read_bytes())
    for args, message in cases:
        done = run_cli("main", *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], done.stderr


def test_pca_plane_on_two_ranks_and_on_shards_equals_one_process(trained):
    """Two ranks that each make the PCA plane whole give one process's store bit for bit; two ranks that shard the
    model (parallel.shard=2) and read only their rows of every checkpoint, the Gram matrix summed over them, give the
    same plane to float64 rounding (the inner products added in another order), so the same store bit for bit here,
    and directions equal to a float32 rounding."""
    out, ckpt = trained
    args = [f"model.checkpoint={ckpt / 'final.pt'}", "direction=pca", f"direction.trajectory={ckpt}", *SAME_PATH]
    one = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID, *args,
                          f"out_dir={out}", "name=pca_one"], cwd=out, env=ENV, capture_output=True, text=True,
                         timeout=300)  # one thread, as each torchrun rank has: the stores compare bitwise
    assert one.returncode == 0, one.stderr
    for name, extra in (("pca_two", []), ("pca_s2", ["parallel.shard=2"])):
        two = torchrun(2, *args, *extra, f"out_dir={out}", f"name={name}", cwd=out)
        assert two.returncode == 0, two.stdout + two.stderr
        assert_same_store(out / "pca_one" / "landscape.zarr", out / name / "landscape.zarr")
    assert "this rank read its rows of" in (out / "pca_s2" / "logs" / "rank1.log").read_text()
    a, b = (zarr.open_group(out / n / "landscape.zarr", mode="r") for n in ("pca_one", "pca_s2"))
    np.testing.assert_allclose(b["trajectory/coords"][...], a["trajectory/coords"][...], rtol=1e-9, atol=1e-12)
    assert b.attrs["explained_variance"] == pytest.approx(a.attrs["explained_variance"], rel=1e-12)
    for da, db in zip(read_directions(out / "pca_one" / "landscape.zarr"), read_directions(out / "pca_s2" /
                                                                                          "landscape.zarr")):
        for k in da:
            x, y = np.asarray(da[k]), np.asarray(db[k])
            np.testing.assert_allclose(y, x, rtol=0, atol=2e-7 * np.abs(x).max())

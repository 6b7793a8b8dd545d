"""Curves between minima (Garipov et al. 2018) end to end: two MLPs trained on digits from different seeds, the
linear path's barrier clearly positive, the trained Bezier curve's at most a quarter of it (each with its standard
error in summary.json), the curve's ends A and B bit for bit, a 2-rank torchrun sweep of the curve equal to 1
process, and landscape-compare tabulating both barriers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine
from engine.app.compare import compare_runs
from engine.app.landscape import run_landscape, run_train
from engine.config.cross import check_combination
from engine.core.errors import UserError
from engine.directions.curves import curve_directions
from engine.sources.checkpoints import load_state
from engine.sources.data import load_data
from engine.sources.models import build_model
from engine.store.read import read_array, read_surface
from engine.sweep.perturb import Perturber
from helpers import ENV, assert_same_store, make_cfg

MLP = ["model=mlp", "model.hidden=[64,64]", "train.epochs=8", "eval.progress=false", "eval.samples=null",
       "eval.batch_size=128", "summary.epsilon=null", "summary.adaptive_radius=null",
       "summary.adaptive_average_radius=null"]
PATH = ["grid=line", "grid.resolution=[11]", "grid.x=[0,1]", "grid.tile=[4]", "grid.preview=2"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Models A and B (seeds 0 and 1), the linear path between them, and the Bezier curve's 1-process store (its
    run in a subprocess with one thread, as the ranks run)."""
    out = tmp_path_factory.mktemp("curves")
    models = []
    for seed in (0, 1):
        cfg, _ = make_cfg(out, *MLP, f"train.seed={seed}", f"name=seed{seed}")
        models.append(run_train(cfg))
    a, b = models
    common = [*MLP, *PATH, f"model.checkpoint={a}", f"direction.checkpoints=[{b}]", f"out_dir={out}"]
    cfg, resolved = make_cfg(out, *common, "direction=interpolation", "name=linear")
    run_landscape(cfg, resolved, log=False)
    curve = [*common, "direction=curve", "direction.curve_epochs=15", "plot.enabled=false", "eval.points_per_pass=4"]
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *curve, "name=curve"],
                          cwd=out, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out, a, b, curve


def barrier_of(run) -> dict:
    return json.loads((run / "summary.json").read_text())["barrier"]


def test_linear_barrier_is_positive_and_the_curve_removes_most_of_it(paths):
    out, *_ = paths
    linear, curve = barrier_of(out / "linear")["loss"], barrier_of(out / "curve")["loss"]
    assert linear["value"] > 0.1 and linear["significant"] and linear["stderr"] > 0
    assert 0.0 < linear["t"] < 1.0
    assert curve["value"] <= linear["value"] / 4, (curve, linear)
    assert curve["stderr"] > 0 and barrier_of(out / "curve")["accuracy"]["stderr"] > 0
    ends = read_surface(out / "linear" / "landscape.zarr").metrics["loss"][[0, -1]]
    # A and B themselves (the weights bit for bit: the next test); here run in two processes, so to float rounding
    np.testing.assert_allclose(read_surface(out / "curve" / "landscape.zarr").metrics["loss"][[0, -1]], ends, rtol=1e-6)
    table = (out / "cmp" / "comparison.md")
    compare_runs([out / "linear", out / "curve"], out / "cmp")
    assert "loss barrier" in table.read_text() and f"{linear['value']:.4g}" in table.read_text()


def test_the_curve_ends_at_a_and_b_bit_for_bit(paths):
    out, a, b, _ = paths
    data = load_data(make_cfg(out, *MLP)[0].data)
    model = build_model(make_cfg(out, *MLP)[0].model, data.input_shape, data.num_classes)
    model.load_state_dict(load_state(a, model))
    names = [n for n, _ in model.named_parameters()]
    tensors = [p.detach() for p in model.parameters()]
    saved = torch.load(out / "curve" / "curve" / "bends.pt", weights_only=True)
    made = curve_directions("bezier", 1, names, [t.clone() for t in tensors], load_state(b, model), saved["bends"])
    assert made.coefficients is not None
    coefficients = made.coefficients(np.array([[0.0], [0.5], [1.0]]))
    np.testing.assert_array_equal(coefficients, [[0, 0], [0.5, 0.25], [0, 1]])  # 2t(1-t) on the bend, t^2 on B
    want_a, want_b = [t.clone() for t in tensors], load_state(b, model)
    perturber = Perturber(tensors, made.directions, made.end)
    with perturber.active():
        perturber.set(tuple(coefficients[2]))
        assert all(torch.equal(t, want_b[n]) for n, t in zip(names, tensors))
        perturber.set(tuple(coefficients[0]))
        assert all(torch.equal(t, w) for t, w in zip(tensors, want_a))
        perturber.set(tuple(coefficients[1]))  # the quadratic Bezier at t = 1/2: A/4 + bend/2 + B/4
        mid = [0.25 * x.double() + 0.5 * saved["bends"][0][n].double() + 0.25 * want_b[n].double()
               for x, n in zip(want_a, names)]
        assert all(torch.allclose(t.double(), m, atol=1e-5) for t, m in zip(tensors, mid))


def test_two_ranks_sweep_the_curve_as_one_process(paths):
    """The bends trained by the 1-process run are reused (same settings, same A and B), so this compares the sweep."""
    out, _, _, curve = paths
    (out / "ranks" / "curve").mkdir(parents=True)
    shutil.copy(out / "curve" / "curve" / "bends.pt", out / "ranks" / "curve" / "bends.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "engine.sweep",
           *curve, "name=ranks"]
    done = subprocess.run(cmd, cwd=out, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_store(out / "curve" / "landscape.zarr", out / "ranks" / "landscape.zarr")
    assert barrier_of(out / "ranks") == barrier_of(out / "curve")


def test_curve_settings_are_checked_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"direction\.bends=1 \(got 2\)"):  # the default grid is a plane
        check_combination(make_cfg(tmp_path, "direction=curve", "direction.checkpoints=[b.pt]", "direction.bends=2")[0])
    with pytest.raises(UserError, match=r"direction\.over=weights"):
        make_cfg(tmp_path, "direction=curve", "direction.checkpoints=[b.pt]", "direction.over=states")
    with pytest.raises(UserError, match=r"direction\.curve='spline'"):
        make_cfg(tmp_path, "direction=curve", "direction.checkpoints=[b.pt]", "direction.curve=spline")


def test_plane_through_a_b_and_the_bend_draws_the_curve(paths):
    """grid=plane: A at the origin, B on the first axis, the bend marked, the curve as the drawn path (the bends of
    the 1D run are reused, so nothing is trained again)."""
    out, a, b, _ = paths
    (out / "plane" / "curve").mkdir(parents=True)
    shutil.copy(out / "curve" / "curve" / "bends.pt", out / "plane" / "curve" / "bends.pt")
    cfg, resolved = make_cfg(out, *MLP, f"model.checkpoint={a}", f"direction.checkpoints=[{b}]", "direction=curve",
                             "direction.curve_epochs=15", "grid=plane", "grid.resolution=[3,3]", "grid.x=[-1,20]",
                             "grid.y=[-5,10]", "name=plane")
    surface = read_surface(run_landscape(cfg, resolved, log=False).store)
    markers = surface.attrs["markers"]
    assert markers["A"] == [0.0, 0.0] and markers["B"][1] == 0.0 and markers["bend"][1] > 0
    path = read_array(out / "plane" / "landscape.zarr", "trajectory/coords")
    assert path is not None
    np.testing.assert_allclose(path[0], markers["A"], atol=1e-12)
    np.testing.assert_allclose(path[-1], markers["B"])
    np.testing.assert_allclose(path[len(path) // 2], 0.5 * np.array(markers["bend"]) + 0.25 * np.array(markers["B"]))
    assert np.isfinite(surface.metrics["loss"]).all()


def test_batchnorm_model_recalibrates_at_every_t_and_the_python_api(tmp_path, trained_run):
    """A ResNet with BatchNorm (the session's trained one as A, a perturbed copy as B) is refused without
    eval.recalibrate_bn, and runs with it (statistics recomputed at every t); the Python API trains its curve on
    train_data."""
    a = trained_run[2].run_dir / "checkpoints" / "final.pt"
    torch.manual_seed(1)
    state = torch.load(a, weights_only=True)["state_dict"]
    torch.save({n: t + 0.05 * torch.randn_like(t) if n.endswith("weight") else t for n, t in state.items()},
               tmp_path / "b.pt")
    b = tmp_path / "b.pt"
    line = ["grid=line", "grid.resolution=[3]", "grid.x=[0,1]", "grid.preview=0", f"model.checkpoint={a}",
            "direction=curve", f"direction.checkpoints=[{b}]", "direction.curve_epochs=1", "direction.curve=polychain",
            "direction.curve_batch_size=128", *MLP[6:]]  # no sharpness numbers
    cfg, resolved = make_cfg(tmp_path, *line, "name=bn")
    with pytest.raises(UserError, match=r"eval\.recalibrate_bn=true"):
        run_landscape(cfg, resolved, log=False)
    cfg, resolved = make_cfg(tmp_path, *line, "name=bn", "eval.recalibrate_bn=true", "eval.recalibrate_samples=64")
    result = run_landscape(cfg, resolved, log=False)
    assert np.isfinite(read_surface(result.store).metrics["loss"]).all() and "barrier" in result.summary
    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    model.load_state_dict(load_state(a, model))
    train = (data.train.x, data.train.y)
    settings = {"direction": "curve", "direction.checkpoints": [str(b)], "direction.curve_epochs": 1,
                "grid": "line", "grid.resolution": [3], "grid.x": [0, 1], "grid.preview": 0, "out_dir": str(tmp_path),
                "eval.recalibrate_bn": True, "eval.recalibrate_samples": 64, "eval.batch_size": 64,
                "summary.epsilon": None, "summary.adaptive_radius": None, "summary.adaptive_average_radius": None}
    with pytest.raises(UserError, match="train_data="):
        engine.landscape(model, (data.test.x[:64], data.test.y[:64]), **settings)
    surface = engine.landscape(model, (data.test.x[:64], data.test.y[:64]), train_data=train, **settings)
    assert np.isfinite(surface.loss.values).all() and surface.attrs["barrier"]["loss"]["value"] is not None


def test_curve_between_two_hugging_face_language_models(tmp_path):
    """A 2-layer GPT-2 of width 32 and a perturbed copy as B: the curve trains on the text's training blocks (dict
    batches through the model's functional call), moving its bend off the midpoint, and the sweep has a barrier."""
    from transformers import GPT2LMHeadModel

    from hf_fixtures import save_tiny_lm, tiny_text

    text = tiny_text(6000)
    (tmp_path / "corpus.txt").write_text(text)
    save_tiny_lm(tmp_path / "lm", text)
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "lm")
    torch.manual_seed(1)
    torch.save({n: t + 0.02 * torch.randn_like(t) if t.is_floating_point() else t
                for n, t in model.state_dict().items()}, tmp_path / "b.pt")
    cfg, resolved = make_cfg(tmp_path, "model=hf", f"model.path={tmp_path / 'lm'}", "data=text",
                             f"data.path={tmp_path / 'corpus.txt'}", "data.block_size=32", "loss=causal_lm",
                             "eval.batch_size=8", "eval.samples=16", "eval.points_per_pass=1", "direction=curve",
                             f"direction.checkpoints=[{tmp_path / 'b.pt'}]", "direction.curve_epochs=1",
                             "direction.curve_batch_size=16", "grid=line", "grid.resolution=[3]", "grid.x=[0,1]",
                             "grid.preview=0", *MLP[6:], "name=lm")
    result = run_landscape(cfg, resolved, log=False)
    loss = read_surface(result.store).metrics["loss"]
    assert np.isfinite(loss).all() and result.summary["barrier"]["loss"]["value"] is not None
    bends = torch.load(result.run_dir / "curve" / "bends.pt", weights_only=True)["bends"]
    name = "transformer.h.0.attn.c_attn.weight"
    a, b = model.state_dict()[name], torch.load(tmp_path / "b.pt")[name]
    midpoint = a + 0.5 * (b - a)  # where the bend starts, exactly as train_bends computes it
    assert len(bends) == 1 and not torch.equal(bends[0][name], midpoint)

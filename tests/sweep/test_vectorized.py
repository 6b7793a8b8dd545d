"""The fast path: K points per vmap pass agree with the in-place K = 1 path (and so with the naive reference
of test_sweep), with and without BatchNorm, on a non-square grid, in 'states' mode and with streamed batches;
a model vmap cannot run falls back with a logged reason; reduced precision on a CPU is refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.store.read import read_surface
from engine.sweep.vectorized import make_evaluator
from helpers import DataDependent, make_cfg

# 70 eval samples in batches of 32: a short last batch, so a mean of per-batch means cannot pass for the mean
GRID = ["grid.resolution=[7,4]", "grid.tile=[3,3]", "grid.y=[-0.5,0.7]", "eval.samples=70",
        "summary.epsilon=null"]


def _loss(tmp_path, name, *overrides):
    cfg, resolved = make_cfg(tmp_path, *GRID, f"name={name}", *overrides)
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


def test_model_vmap_cannot_run_falls_back(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)  # runs route engine logs to rank files
    model = DataDependent()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    dirs = [[torch.randn_like(t) for t in theta] for _ in range(2)]
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    with caplog.at_level(logging.WARNING, logger="engine.sweep.vectorized"):
        assert make_evaluator(model, names, theta, dirs, batches) is None
    assert "using the in-place K=1 path" in caplog.text
    loss, _ = _loss(tmp_path, "custom", "model=custom", "model._target_=helpers.DataDependent",
                    "eval.points_per_pass=8")
    assert np.isfinite(loss).all()


def test_reduced_precision_on_cpu_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"eval\.precision=bf16 is for CUDA devices"):
        _loss(tmp_path, "bf16", "eval.precision=bf16", "eval.device=cpu")

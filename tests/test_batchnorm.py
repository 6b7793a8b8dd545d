"""BatchNorm recalibration in a run (eval.recalibrate_bn=true) against an independent recalibration: at every
point, statistics recomputed from scratch on the run's training samples, in the run's batches, then evaluated."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.app.landscape import run_landscape
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import Split, load_data, subsample
from engine.sources.models import build_model
from engine.store.read import read_directions, read_surface
from helpers import make_cfg


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

"""Shared test helpers (not fixtures: those live in conftest.py): real Hydra configs with tiny settings so each run
takes seconds, the commands in subprocesses as a user runs them, and store comparisons.

Imported as `from helpers import ...` (pyproject.toml puts tests/ on pytest's pythonpath).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from engine.config.check import open_dict_keys, to_run_config
from engine.config.files import CONF_DIR
from engine.config.schema import RunConfig, register_configs

register_configs()

# Small and fast: a narrow ResNet-8 trained one epoch on digits, 64 eval samples, tiles of 4x4, K=4 points
# per vmap pass and batches of 32 (fixed, not timed, so stores of different rank counts compare bitwise).
TINY = ["model.width=4", "train.epochs=1", "eval.samples=64", "eval.progress=false", "plot.enabled=false",
        "grid.resolution=[6,5]", "grid.tile=[4,4]", "eval.points_per_pass=4",
        "eval.batch_size=32"]
# The grid of the multi-process runs (torchrun, submitit, SLURM): 9 full tiles of 3x3 and 4 preview tiles.
GRID = ["grid.resolution=[9,8]", "grid.tile=[3,3]", "grid.preview=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every process: stores compare bitwise
# in place, one point at a time, contiguous weights: the path a sharded model (parallel.shard) takes, so its stores
# compare bitwise with one process's given these too
SAME_PATH = ["eval.points_per_pass=1", "eval.rewrites=[]", "eval.channels_last=false", "eval.batch_size=16",
             "summary.epsilon=null", "summary.adaptive_radius=null"]


def make_cfg(out_dir: Path, *overrides: str) -> tuple[RunConfig, dict[str, Any]]:
    """The typed config and resolved dict the CLI would build for these overrides (TINY first; model/data/loss
    kwargs keys need no `+`, as on the command line)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=open_dict_keys([*TINY, f"out_dir={out_dir}", *overrides]))
    return to_run_config(cfg)


def run_cli(entry: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a console entry point of engine.app.cli (main, train_main, plot_main) in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-c", f"from engine.app.cli import {entry}; {entry}()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def flags_first(overrides: list[str], *more: str) -> list[str]:
    """A leading -m stays first (Hydra takes its flags before the overrides), the other overrides go last."""
    head = overrides[:1] if overrides[0] == "-m" else []
    return [*head, *more, *overrides[len(head):]]


def torchrun(nproc: int, *overrides: str, cwd: Path, wait: bool = True):
    """`torchrun --standalone -m engine.sweep` with real gloo ranks (a free port is picked by torchrun)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "engine.sweep", *TINY, *GRID, *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def assert_same_store(a: Path, b: Path) -> None:
    """Both stores complete, and every metric of every level equal bit for bit."""
    from engine.store.grid import PREVIEW
    from engine.store.read import read_surface

    for level in ("", PREVIEW):
        sa, sb = read_surface(a, level), read_surface(b, level)
        assert sa.done.all() and sb.done.all()
        for metric in ("loss", "accuracy"):
            np.testing.assert_array_equal(sa.metrics[metric], sb.metrics[metric])



def trained_model(cfg: RunConfig, result: Any) -> tuple[nn.Module, Any]:
    """The model of a finished run (its model.checkpoint, else the weights it trained) in eval mode, and the run's
    eval split."""
    from engine.sources.checkpoints import load_checkpoint
    from engine.sources.data import load_data
    from engine.sources.models import build_model
    from engine.sources.splits import subsample

    data = load_data(cfg.data)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, cfg.model.checkpoint or result.run_dir / "checkpoints" / "final.pt")
    return model.eval(), subsample(data.test, cfg.eval.samples, cfg.data.seed)

class DataDependent(nn.Module):
    """Branches on the value of a weight: vmap over stacked weights cannot run this, nor can torch.fx trace it.
    A run reaches it as `model=custom model._target_=helpers.DataDependent`."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lin.weight.sum() > 0:
            return self.lin(x.flatten(1))
        return -self.lin(x.flatten(1))


# Figures: a grid whose axes differ in length and range from each other, so a transposed drawing cannot pass.
PLOT_X = np.linspace(-1.0, 1.0, 9)
PLOT_Y = np.linspace(-0.5, 1.5, 7)


def bowl(x: np.ndarray = PLOT_X, y: np.ndarray = PLOT_Y) -> np.ndarray:
    """x**2 + 2 y**2 laid out as arr[i, j] = f(x[i], y[j])."""
    xx, yy = np.meshgrid(x, y, indexing="ij")
    return xx**2 + 2 * yy**2


def file_names(paths: list[Path]) -> set[str]:
    """File names of a list of paths."""
    return {p.name for p in paths}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Running statistics and affine parameters away from their defaults, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


def float64_point(model: nn.Module, names: list[str], theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
               x: torch.Tensor, y: torch.Tensor, point: np.ndarray) -> dict[str, float]:
    """Loss and accuracy of a float64 copy of the model set to theta* + sum_k c_k d_k (no engine code)."""
    ref = copy.deepcopy(model).double()
    state = ref.state_dict()
    for i, name in enumerate(names):
        state[name] = theta[i].double() + sum(float(c) * d[i].double() for c, d in zip(point, directions))
    ref.load_state_dict(state)
    with torch.no_grad():
        logits = ref(x.double())
    return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).double().mean().item()}

"""Shared helpers: compose real Hydra configs with tiny settings so each test runs in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from engine.config.check import to_run_config
from engine.config.files import CONF_DIR
from engine.config.schema import RunConfig, register_configs

register_configs()

# Small and fast: a narrow ResNet-8 trained one epoch on digits, 64 eval samples, tiles of 4x4, K=4 points
# per vmap pass and batches of 32 (fixed, not timed, so stores of different rank counts compare bitwise).
TINY = ["model.width=4", "train.epochs=1", "eval.samples=64", "eval.progress=false", "plot.enabled=false",
        "grid.resolution=[6,5]", "grid.tile=[4,4]", "eval.points_per_pass=4",
        "eval.batch_size=32"]


def make_cfg(out_dir: Path, *overrides: str) -> tuple[RunConfig, dict[str, Any]]:
    """The typed config and resolved dict the CLI would build for these overrides (TINY first)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"out_dir={out_dir}", *overrides])
    return to_run_config(cfg)


def run_cli(entry: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a console entry point of engine.app.cli (main, train_main, plot_main) in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-c", f"from engine.app.cli import {entry}; {entry}()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def assert_same_store(a: Path, b: Path) -> None:
    """Both stores complete, and every metric of every level equal bit for bit."""
    from engine.store.grid import PREVIEW
    from engine.store.read import read_surface

    for level in ("", PREVIEW):
        sa, sb = read_surface(a, level), read_surface(b, level)
        assert sa.done.all() and sb.done.all()
        for metric in ("loss", "accuracy"):
            np.testing.assert_array_equal(sa.metrics[metric], sb.metrics[metric])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny complete run shared by the tests that only read it."""
    from engine.app.landscape import run_landscape

    out = tmp_path_factory.mktemp("runs")
    cfg, resolved = make_cfg(out)
    return cfg, resolved, run_landscape(cfg, resolved, log=False)

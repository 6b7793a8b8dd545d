"""Launch paths on CPU with real processes: submitit's local executor as a 2-task job, Hydra multirun over two
architectures with the comparison figure, and a stopped run drawing its complete coarse preview."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import zarr

from engine.app.landscape import run_landscape
from engine.figures.draw import surface_to_draw
from engine.store.grid import PREVIEW
from engine.store.read import read_surface
from helpers import GRID, TINY, make_cfg, run_cli


def test_submitit_local_two_tasks_equal_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID, "name=one"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    ckpt = tmp_path / "runs" / "one" / "checkpoints" / "final.pt"
    job = subprocess.run([sys.executable, "-m", "engine.app.launch", "--cluster",
                          "local", "--tasks", "2", "--wait", *TINY, *GRID, f"model.checkpoint={ckpt}", "name=two"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "done: runs/two/landscape.zarr" in job.stdout
    assert sorted(p.name for p in (tmp_path / "runs" / "two" / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    for level in ("", PREVIEW):
        a = read_surface(tmp_path / "runs" / "one" / "landscape.zarr", level)
        b = read_surface(tmp_path / "runs" / "two" / "landscape.zarr", level)
        assert b.done.all()
        np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"])


def test_hydra_multirun_two_models_and_comparison(tmp_path):
    done = run_cli("main", "-m", "model=resnet8,plain8", *TINY, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = tmp_path / "runs"
    for name in ("resnet8-digits", "plain8-digits"):
        assert read_surface(runs / name / "landscape.zarr").done.all()
    assert (runs / "comparison_loss.png").stat().st_size > 1000
    table = (runs / "comparison.md").read_text()
    assert "| resnet8-digits |" in table and "| plain8-digits |" in table
    again = run_cli("compare_main", str(runs / "resnet8-digits"), str(runs / "plain8-digits"), "--out",
                    str(tmp_path / "cmp"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "cmp" / "comparison_accuracy.png").exists()


def test_stopped_run_draws_its_complete_coarse_preview(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "grid.resolution=[16,12]", "grid.tile=[4,4]", "grid.preview=3",
                             "plot.enabled=true", "plot.formats=[png]")
    result = run_landscape(cfg, resolved, log=False)
    assert [lvl for lvl, _ in result.tiles_computed[:2]] == [PREVIEW, PREVIEW]  # coarse level first
    root = zarr.open_group(result.store, mode="r+")
    root["done"][1:, :] = 0  # as if stopped after the preview and the first row of full tiles
    surface, state = surface_to_draw(result.store)
    assert surface.metrics["loss"].shape == (6, 4) and "coarse preview, 3/12 tiles done" in state
    np.testing.assert_array_equal(surface.metrics["loss"], read_surface(result.store).metrics["loss"][::3, ::3])

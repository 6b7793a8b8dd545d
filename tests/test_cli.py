"""The commands end to end in subprocesses, as a user runs them, and one clear line for each bad input."""

from __future__ import annotations

import json

import pytest
import torch

from engine.models import CifarResNet
from tests.conftest import TINY, run_cli

FIGURES = {"contour", "contourf", "heatmap", "surface3d", "accuracy_heatmap"}


def test_default_command_makes_store_summary_figures_and_replot(tmp_path):
    args = [a for a in TINY if not a.startswith("plot.")]
    done = run_cli("main", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "resnet8-digits"
    assert f"store:   {run_dir.relative_to(tmp_path)}/landscape.zarr" in done.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_001.pt", "final.pt"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["points_computed"] == 30
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "config.json").exists()
    for fmt in ("png", "pdf"):
        assert {p.stem for p in (run_dir / "figures").glob(f"*.{fmt}")} >= FIGURES
    again = run_cli("plot_main", str(run_dir / "landscape.zarr"), "--log", "--out", str(tmp_path / "redraw"),
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "complete" in again.stdout and (tmp_path / "redraw" / "contourf.png").stat().st_size > 1000
    train = run_cli("train_main", *args, cwd=tmp_path)
    assert train.returncode == 0 and "reusing trained weights" in train.stdout


def _bad_ckpt(tmp_path):
    torch.save({"state_dict": CifarResNet(20, 10, 1, 4, True).state_dict()}, tmp_path / "other.pt")
    return f"model.checkpoint={tmp_path / 'other.pt'}"


BAD = [
    (["model.checkpoint=/no/such.pt"], "checkpoint /no/such.pt does not exist"),
    ([_bad_ckpt], "does not fit model CifarResNet: unexpected layer1.1.conv1.weight"),
    (["grid.resolution=[0,5]"], "grid.resolution: 0 points along x; give at least 1"),
    (["grid.x=[1,-1]"], "grid.x=[1.0, -1.0] is an empty or inverted range"),
    (["grid.y=[0.5,0.5]"], "grid.y=[0.5, 0.5] is an empty or inverted range"),
    (["model.name=vgg7"], "unknown model name 'vgg7'"),
    (["grid.nope=1"], "Key 'nope' not in 'GridConfig'"),
    (["eval.samples=many"], "eval.samples"),
    (["summary.epsilon=0"], "summary.epsilon=0.0 must be > 0"),
    (["hessian.steps=2", "hessian.top_k=5"], "hessian.steps=2 must be >= hessian.top_k=5"),
    (["direction=interpolation", "direction.checkpoints=[]"], "needs direction.checkpoints=[B]"),
    (["direction.kind=sideways"], "direction.kind='sideways' is not one of"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[m[:24] for _, m in BAD])
def test_bad_input_one_clear_line_and_no_store(overrides, message, tmp_path):
    overrides = [o(tmp_path) if callable(o) else o for o in overrides]
    done = run_cli("main", *TINY, *overrides, "name=bad", cwd=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "bad" / "landscape.zarr").exists()


def test_replot_of_missing_store_is_one_line(tmp_path):
    done = run_cli("plot_main", str(tmp_path / "none.zarr"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "is not a landscape store" in done.stderr

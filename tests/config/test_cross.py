"""Config cross-checks: settings that contradict each other, or inputs a run would only find missing after training,
are refused in one line before anything is loaded, trained or written, from the command line and from Python."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.app.landscape import run_landscape
from engine.app.spectrum import run_spectrum
from engine.config.cross import check_combination
from engine.config.schema import DirectionConfig, EvalConfig, GridConfig, RunConfig, TrainConfig
from engine.core.errors import UserError
from helpers import TINY, make_cfg, run_cli


def _short_trajectory(tmp_path: Path) -> str:
    folder = tmp_path / "traj"
    folder.mkdir()
    for k in (1, 2):
        torch.save({"state_dict": {}}, folder / f"epoch_{k:03d}.pt")
    return f"direction.trajectory={folder}"


CROSS = [
    (["direction=interpolation", "direction.checkpoints=[B.pt]"],
     "direction=interpolation is a 1D sweep: use grid=line"),
    (["grid=line", "grid.resolution=[7]", "direction=pca"], "direction=pca spans a plane: use grid=plane"),
    (["grid=line", "grid.resolution=[7]", "direction=plane", "direction.checkpoints=[B.pt,C.pt]"],
     "direction=plane spans a plane"),
    (["direction=pca", "train.epochs=2"], "direction=pca needs a trajectory of at least 3 checkpoints"),
    (["direction=pca", _short_trajectory], "direction=pca needs at least 3 checkpoints (epoch_*.pt) in"),
    (["direction=plane", "direction.norm=filter", "direction.checkpoints=[B.pt,C.pt]"],
     "keeps the checkpoints' own geometry: set direction.norm=none"),
    (["grid=line", "grid.resolution=[7]", "direction=interpolation", "direction.checkpoints=[/no/B.pt]"],
     "checkpoint /no/B.pt does not exist; give direction.checkpoints=<an existing file>"),
    (["direction=file", "direction.path=/no/dirs.pt"], "direction file /no/dirs.pt does not exist"),
    (["eval.device=cpu", "eval.precision=bf16"], "eval.precision=bf16 is autocast on CUDA devices"),
    (["eval.perturb=on_access", "eval.points_per_pass=4"],
     "eval.perturb=on_access does not go with eval.points_per_pass=4"),
]


@pytest.mark.parametrize(("overrides", "message"), CROSS, ids=[m[:32] for _, m in CROSS])
def test_contradictions_refused_in_one_line_before_any_work(overrides, message, tmp_path):
    overrides = [o(tmp_path) if callable(o) else o for o in overrides]
    done = run_cli("main", *TINY, "name=bad", *overrides, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()] if (tmp_path / "runs").exists() else []
    assert not written  # nothing trained, no store, no record (Hydra may have made the empty run folder)


def test_python_api_refuses_before_training(tmp_path):
    """A RunConfig built in Python skips the CLI's checks; run_landscape and run_spectrum still refuse first."""
    pca_short = RunConfig(out_dir=str(tmp_path), direction=DirectionConfig(kind="pca", norm="none", ignore="none"),
                          train=TrainConfig(epochs=2))
    with pytest.raises(UserError, match="direction=pca needs a trajectory of at least 3"):
        run_landscape(pca_short, {}, log=False)
    bf16 = RunConfig(out_dir=str(tmp_path), eval=EvalConfig(device="cpu", precision="bf16"))
    with pytest.raises(UserError, match="autocast on CUDA devices"):
        run_spectrum(bf16, {}, log=False)
    assert not any(tmp_path.iterdir())


def test_combinations_that_work_pass():
    check_combination(RunConfig())
    check_combination(RunConfig(grid=GridConfig(resolution=[5]), direction=DirectionConfig(
        kind="interpolation", norm="none", ignore="none", checkpoints=["B.pt"])))
    check_combination(RunConfig(direction=DirectionConfig(kind="pca", norm="none", ignore="none"),
                                train=TrainConfig(epochs=3)))
    check_combination(RunConfig(grid=GridConfig(resolution=[5]), direction=DirectionConfig(kind="hessian")))


def test_reduced_precision_on_cpu_is_refused(tmp_path):
    """bf16 with eval.device=cpu: refused when the config is composed, and by run_landscape before any work for a
    RunConfig built in Python (the evaluator's own guard, which a run no longer reaches, is checked in
    sources/test_losses.py)."""
    with pytest.raises(UserError, match=r"eval\.precision=bf16 is autocast on CUDA devices"):
        make_cfg(tmp_path, "name=bf16", "eval.precision=bf16", "eval.device=cpu")
    bf16 = RunConfig(out_dir=str(tmp_path), eval=EvalConfig(device="cpu", precision="bf16"))
    with pytest.raises(UserError, match=r"eval\.precision=bf16 is autocast on CUDA devices"):
        run_landscape(bf16, {}, log=False)
    assert not any(tmp_path.iterdir())

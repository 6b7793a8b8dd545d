"""The commands end to end in subprocesses, as a user runs them, and one clear line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from engine.core.errors import UserError
from engine.sources.models import CifarResNet
from helpers import TINY, flags_first, make_cfg, run_cli

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
    (["foo=1"], "unknown config key 'foo' (the top-level keys are name, out_dir, model,"),
    (["+foo=1"], "unknown config key 'foo'"),
    (["grid.nope=1"], "unknown config key 'grid.nope' (grid has resolution, x, y, tile, preview)"),
    (["+grid.nope=1"], "unknown config key 'grid.nope'"),
    (["eval.sample=3"], "unknown config key 'eval.sample' (did you mean eval.samples?)"),
    (["evl.samples=3"], "unknown config key 'evl.samples' (did you mean eval.samples?)"),
    (["eval.samples=many"], "eval.samples=many: Value 'many' of type 'str' could not be converted to Integer"),
    (["model.kwargs.depth=3"], "add it with +model.kwargs.depth=3"),
    (["model=vgg7"], "no config 'vgg7' in group model; options: custom, mlp,"),
    (["grid.x=[1,"], "cannot read override 'grid.x=[1,'"),
    (["-m", "model.width=4,zero"], "model.width=zero: Value 'zero' of type 'str' could not be converted"),
    (["-m", "model.width=4,0"], "model.width=0 must be >= 1"),
    (["model.width=8", "-m", "grid.preview=1,2"], "unrecognized argument(s) 'grid.preview=1,2': Hydra's flags"),
    (["summary.epsilon=0"], "summary.epsilon=0.0 must be > 0"),
    (["hessian.steps=2", "hessian.top_k=5"], "hessian.steps=2 must be >= hessian.top_k=5"),
    (["direction=interpolation", "direction.checkpoints=[]"], "needs direction.checkpoints=[B]"),
    (["direction.kind=sideways"], "direction.kind='sideways' is not one of"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[m[:24] for _, m in BAD])
def test_bad_input_one_clear_line_and_no_store(overrides, message, tmp_path):
    overrides = [o(tmp_path) if callable(o) else o for o in overrides]
    done = run_cli("main", *flags_first(overrides, *TINY, "name=bad"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert not (tmp_path / "runs" / "bad" / "landscape.zarr").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One complete tiny run through the CLI (the working folder and the run folder), shared by the reruns."""
    cwd = tmp_path_factory.mktemp("cli")
    done = run_cli("main", *TINY, "name=kept", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd, cwd / "runs" / "kept"


def test_run_records_its_config_and_no_hydra_job_log(finished_run):
    _, run_dir = finished_run
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == [*TINY, "name=kept"]
    recorded = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert recorded["name"] == "kept" and recorded["grid"]["x"] == [-1.0, 1.0] and recorded["model"]["width"] == 4
    assert yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["name"]
    assert json.loads((run_dir / "config.json").read_text())["grid"]["resolution"] == [6, 5]
    assert not list(run_dir.glob("*.log"))  # Hydra's job log is off: the console keeps its lines


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


REFUSED = [
    (["grid.x=[-2,2]"], "was written by a different config (grid.x: [-1.0, 1.0] -> [-2.0, 2.0])"),
    (["+foo=1"], "unknown config key 'foo'"),
    (["grid.nope=1"], "unknown config key 'grid.nope'"),
    (["eval.samples=many"], "eval.samples=many"),
    (["model.width=0"], "model.width=0 must be >= 1"),
    (["-m", "model.width=4,zero"], "model.width=zero"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_refused_rerun_leaves_the_run_folder_untouched(finished_run, overrides, message):
    cwd, run_dir = finished_run
    before = _snapshot(run_dir)
    done = run_cli("main", *flags_first(overrides, *TINY, "name=kept"), cwd=cwd)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    assert _snapshot(run_dir) == before  # every file byte for byte, the rank logs included


@pytest.mark.parametrize("argv", [
    ["+model.kwargs.depth=3", "+data.kwargs={root: /tmp}"],
    ["model=plain20", "grid=line", "direction=interpolation", "direction.checkpoints=[b.pt]"],
    ["-m", "model=resnet8,plain8", "eval.samples=32,64", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2"],
    ["hydra.job.chdir=true", "hydra.run.dir=elsewhere"],
    ["-m", "model.width=range(2,6,2)", "hydra.verbose=true"],
])
def test_valid_commands_pass_the_check(argv):
    from engine.config.check import check_command_line

    check_command_line(argv)


def test_added_unknown_key_refused_outside_the_cli_too(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'grid\.nope'"):
        make_cfg(tmp_path, "+grid.nope=1")


def test_replot_of_missing_store_is_one_line(tmp_path):
    done = run_cli("plot_main", str(tmp_path / "none.zarr"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "is not a landscape store" in done.stderr

"""The commands end to end in subprocesses, as a user runs them: the default run with its store, summary, figures,
record and replot; reruns refused without touching the run folder; Hydra multirun with the comparison. (Bad input
refused before any work: config/test_check.py and config/test_cross.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from engine.store.read import read_surface
from helpers import TINY, flags_first, run_cli

FIGURES = {"contour", "contourf", "heatmap", "surface3d", "accuracy_heatmap"}


def test_default_command_makes_store_summary_figures_and_replot(tmp_path):
    args = [a for a in TINY if not a.startswith("plot.")]
    done = run_cli("main", *args, "plot.vtk=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "resnet8-digits"
    assert f"store:   {run_dir.relative_to(tmp_path)}/landscape.zarr" in done.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_001.pt", "final.pt"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] and summary["points_computed"] == 30
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "config.json").exists()
    for fmt in ("png", "pdf"):
        assert {p.stem for p in (run_dir / "figures").glob(f"*.{fmt}")} >= FIGURES
    assert (run_dir / "vtk" / "surface.vts").stat().st_size > 1000  # plot.vtk: the ParaView file
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["ranks"] == 1 and provenance["wall_seconds"] > 0 and provenance["devices"][0].count("cpu")
    report, page = run_dir / "report.html", run_dir / "figures" / "landscape.html"
    assert "report:  " in done.stdout and report.stat().st_size > 10_000 and page.stat().st_size > 1_000_000
    again = run_cli("plot_main", str(run_dir / "landscape.zarr"), "--log", "--out", str(tmp_path / "redraw"),
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "complete" in again.stdout and (tmp_path / "redraw" / "contourf.png").stat().st_size > 1000
    assert (tmp_path / "redraw" / "landscape.html").is_file()
    report.unlink()
    folder = run_cli("plot_main", str(run_dir), "--levels", "quantile", cwd=tmp_path)  # a run folder: its report
    assert folder.returncode == 0, folder.stderr
    assert report.is_file()
    train = run_cli("train_main", *args, cwd=tmp_path)
    assert train.returncode == 0 and "reusing trained weights" in train.stdout


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


def test_replot_of_missing_store_is_one_line(tmp_path):
    done = run_cli("plot_main", str(tmp_path / "none.zarr"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "is not a landscape store" in done.stderr


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


@pytest.mark.parametrize("entry", ["main", "spectrum_main"])
def test_a_preflight_refusal_leaves_no_run_folder(tmp_path, entry):
    """A command refused before any work (a missing checkpoint) makes no folder: Hydra never starts its job."""
    done = run_cli(entry, "model.checkpoint=/no/such.pt", "name=refused", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "checkpoint /no/such.pt does not exist" in done.stderr
    assert list(tmp_path.iterdir()) == []

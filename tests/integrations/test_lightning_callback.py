"""engine.integrations.lightning.LandscapeCallback on a Lightning Trainer (CPU, 3 epochs, an MLP on digits) with
TensorBoard, MLflow and W&B loggers at once: the trajectory checkpoints, the PCA plane against `landscape
direction=pca` on the same checkpoints, and every summary number read back with each tracker's own reader. One
module fixture trains once; a second test runs 2-process DDP on gloo under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from engine.app.trackers import summary_scalars
from engine.store.read import read_surface
from integration_fixtures import mlflow_scalars, tensorboard_scalars, wandb_records, wandb_scalars

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:lightning",
                                        "ignore::ResourceWarning", "ignore::PendingDeprecationWarning",
                                        "ignore::FutureWarning")
TESTS = Path(__file__).resolve().parents[1]
SETTINGS = {"grid.resolution": (5, 5), "eval.batch_size": 64, "eval.points_per_pass": 4, "eval.progress": False,
            "summary.epsilon": None,
            "summary.adaptive_radius": None, "summary.adaptive_average_radius": None, "plot.formats": ["png"]}
CLI_SETTINGS = ["grid.resolution=[5,5]", "eval.batch_size=64", "eval.points_per_pass=4", "eval.progress=false",
                "summary.epsilon=null",
                "summary.adaptive_radius=null", "summary.adaptive_average_radius=null", "plot.enabled=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-epoch fit with the callback and all three loggers; the W&B run finished so its log is complete."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    from engine.integrations.lightning import LandscapeCallback
    from integration_fixtures import DigitsModule, digits_loaders

    tmp = tmp_path_factory.mktemp("lightning")
    mp = pytest.MonkeyPatch()
    uri = f"file:{tmp / 'mlruns'}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_MODE": "offline",
                       "WANDB_DIR": str(tmp), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}.items():
        mp.setenv(key, value)
    train, val = digits_loaders()
    callback = LandscapeCallback(**SETTINGS)
    loggers = [TensorBoardLogger(str(tmp / "tb")), MLFlowLogger(experiment_name="digits", tracking_uri=uri),
               WandbLogger(project="digits", save_dir=str(tmp))]
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=loggers, callbacks=[callback],
                         default_root_dir=str(tmp), enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=5)
    module = DigitsModule()
    trainer.fit(module, train, val)
    loggers[2].experiment.finish()
    yield {"tmp": tmp, "callback": callback, "module": module, "uri": uri}
    mp.undo()


def test_trajectory_checkpoints_are_float32_with_epoch_and_step(trained: dict) -> None:
    files = sorted(trained["callback"].directory.glob("epoch_*.pt"))
    blobs = [torch.load(f, weights_only=True) for f in files]
    assert [b["epoch"] for b in blobs] == [1, 2, 3]
    assert [b["step"] for b in blobs] == [23, 46, 69]  # 1438 training digits in batches of 64
    assert all(t.dtype == torch.float32 for b in blobs for t in b["state_dict"].values())
    final = trained["module"].state_dict()
    assert all(torch.equal(blobs[-1]["state_dict"][k], v) for k, v in final.items())


def test_pca_plane_equals_the_cli_on_the_same_checkpoints(trained: dict) -> None:
    callback, tmp = trained["callback"], trained["tmp"]
    last = sorted(callback.directory.glob("epoch_*.pt"))[-1]
    env = {"PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cli = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", "model=custom",
                          "model._target_=integration_fixtures.DigitsModule", f"model.checkpoint={last}",
                          "direction=pca", f"direction.trajectory={callback.directory}", f"out_dir={tmp / 'cli'}",
                          "name=cli", *CLI_SETTINGS], cwd=tmp, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **env})
    assert cli.returncode == 0, cli.stderr[-2000:]
    ours = read_surface(callback.run_dir / "landscape.zarr")
    theirs = read_surface(tmp / "cli" / "cli" / "landscape.zarr")
    for a, b in zip(ours.coords, theirs.coords):
        np.testing.assert_array_equal(a, b)
    for metric in ("loss", "accuracy"):
        np.testing.assert_allclose(ours.metrics[metric], theirs.metrics[metric], rtol=1e-6, atol=0)
    assert np.isfinite(ours.metrics["loss"]).all()
    assert callback.result.attrs["center"]["loss"] == pytest.approx(float(ours.metrics["loss"][2, 2]))


def test_trackers_hold_the_summary_numbers_figures_pages_and_tags(trained: dict) -> None:
    run_dir, tmp = trained["callback"].run_dir, trained["tmp"]
    summary = json.loads((run_dir / "summary.json").read_text())
    want = summary_scalars(summary)
    assert want["landscape/center/loss"] == summary["center"]["loss"]
    assert want["landscape/basin/x/width"] == summary["basin"]["x"]["width"]
    for name, got in (("tensorboard", tensorboard_scalars(tmp / "tb")), ("mlflow", mlflow_scalars(trained["uri"])),
                      ("wandb", wandb_scalars(tmp / "wandb"))):
        missing = sorted(set(want) - set(got))
        assert not missing, f"{name} lacks {missing[:5]}"
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), f"{name}: {key}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=trained["uri"])
    run = client.search_runs([client.get_experiment_by_name("digits").experiment_id])[0]
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert run.data.tags["landscape.config_hash"] == provenance["config_hash"]
    assert run.data.tags["landscape.store"] == str((run_dir / "landscape.zarr").resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "landscape")}
    assert {"landscape/report.html", "landscape/landscape.html", "landscape/figures"} <= artifacts
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(tmp / "tb"))
    mux.Reload()
    images = {tag for tags in mux.Runs().values() for tag in tags.get("images", [])}
    assert "landscape/contour" in images
    saved = {p.name for p in (tmp / "wandb").rglob("*.html")}
    assert {"report.html", "landscape.html"} <= saved
    tags = [tag for r in wandb_records(tmp / "wandb") if r.WhichOneof("record_type") == "run" for tag in r.run.tags]
    assert f"config_hash:{provenance['config_hash']}" in tags


DDP_SCRIPT = """
import json, os, sys
import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from integration_fixtures import DigitsModule, digits_loaders
import engine.integrations.callbacks as callbacks
import engine.integrations.trajectory as trajectory
from engine.integrations.lightning import LandscapeCallback

rank, out = int(os.environ["RANK"]), sys.argv[1]
done = {"saved": [], "logged": []}
save, log_run = trajectory.torch.save, callbacks.log_run
trajectory.torch.save = lambda obj, path: (done["saved"].append(str(path)), save(obj, path))[1]
callbacks.log_run = lambda *a, **k: (done["logged"].append(str(a[0])), log_run(*a, **k))[1]
train, val = digits_loaders()
callback = LandscapeCallback(**{"grid.resolution": (3, 3), "eval.batch_size": 64, "eval.points_per_pass": 1,
                               "eval.progress": False,
                               "summary.epsilon": None, "summary.adaptive_radius": None,
                               "summary.adaptive_average_radius": None, "plot.enabled": False})
trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=TensorBoardLogger(out),
                     callbacks=[callback], default_root_dir=out, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)
trainer.fit(DigitsModule(), train, val)
done["run_dir"] = str(callback.run_dir)
json.dump(done, open(os.path.join(out, f"rank{rank}.json"), "w"))
"""


def test_ddp_on_gloo_only_rank_0_writes_checkpoints_and_logs(tmp_path: Path) -> None:
    script = tmp_path / "fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [Path(p).suffix for p in ranks[0]["saved"]] == [".tmp"] * 3 and ranks[1]["saved"] == []
    assert len(ranks[0]["logged"]) == 1 and ranks[1]["logged"] == []
    assert sorted(p.name for p in (tmp_path / "landscape" / "trajectory").iterdir()) == [
        "epoch_00000012.pt", "epoch_00000024.pt", "epoch_00000036.pt"]  # 1438 samples over 2 ranks, batches of 64
    summary = json.loads((Path(ranks[0]["run_dir"]) / "summary.json").read_text())
    assert summary["complete"] and summary["points_computed"] == 9
    assert len(list(tmp_path.rglob("events.out.tfevents*"))) == 1

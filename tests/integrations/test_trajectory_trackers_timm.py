"""The plain-loop Trajectory (checkpoints and their PCA against a float64 reference), `landscape model=timm` from
a local weights file on image-folder data with `track=tensorboard`, and the one-line refusals: an unknown timm
architecture, a missing extra (named), an unknown tracker; `import engine` loads none of the extras."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.app.trackers import summary_scalars
from engine.core.errors import UserError
from engine.integrations import Trajectory
from engine.sources.models import MLP
from engine.store.read import read_array
from helpers import run_cli

SMALL = ["grid.resolution=[3,3]", "eval.batch_size=8", "eval.points_per_pass=1", "eval.progress=false",
         "summary.epsilon=null", "summary.adaptive_radius=null",
         "summary.adaptive_average_radius=null", "plot.formats=[png]"]


def test_plain_loop_trajectory_pca_matches_a_float64_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))
    model = MLP(8, [6], 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trajectory = Trajectory(tmp_path / "trajectory")
    for step in range(1, 6):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        trajectory.save(model, step, epoch=step)
    monkeypatch.setenv("RANK", "1")  # another rank of a job not yet joined: writes nothing
    assert trajectory.save(model, 99) is None
    monkeypatch.delenv("RANK")
    assert [p.name for p in trajectory.checkpoints()] == [f"epoch_{s:08d}.pt" for s in range(1, 6)]
    surface = trajectory.sweep(model, (x, y), **{"grid.resolution": (3, 3), "eval.points_per_pass": 1,
                                                 "eval.batch_size": 96, "eval.progress": False,
                                                 "summary.epsilon": None, "summary.adaptive_radius": None,
                                                 "summary.adaptive_average_radius": None, "plot.enabled": False,
                                                 "out_dir": str(tmp_path / "runs")})
    coords = read_array(Path(surface.attrs["store"]), "trajectory/coords")
    names = [n for n, _ in model.named_parameters()]
    flat = [torch.cat([torch.load(p, weights_only=True)["state_dict"][n].double().reshape(-1) for n in names])
            for p in trajectory.checkpoints()]
    final = torch.cat([p.detach().double().reshape(-1) for p in model.parameters()])
    deltas = torch.stack(flat) - final
    _, _, vt = torch.linalg.svd(deltas - deltas.mean(0), full_matrices=False)
    reference = (deltas @ vt[:2].T).numpy()
    np.testing.assert_allclose(np.abs(coords), np.abs(reference), rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        centre = float(F.cross_entropy(model(x).double(), y))
    assert float(surface.loss.sel(x=0.0, y=0.0)) == pytest.approx(centre, rel=1e-5)


def test_timm_model_from_a_local_file_on_image_folders_with_track_tensorboard(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the CLI's process: tiny ops on a shared CPU
    pytest.importorskip("tensorboard")
    from engine.config.schema import DataConfig
    from engine.sources.data import load_data
    from integration_fixtures import tensorboard_scalars
    from vision_fixtures import write_images

    sizes = {"cat": [(20, 18)] * 4, "dog": [(17, 21)] * 4}
    write_images(tmp_path / "images" / "train", sizes)
    write_images(tmp_path / "images" / "val", sizes, seed=1)
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=2).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    done = run_cli("main", "model=timm", "model.arch=test_efficientnet", "model.kwargs.num_classes=2",
                   f"model.checkpoint={tmp_path / 'weights.pt'}", "data=imagefolder",
                   f"data.root={tmp_path / 'images'}", "data.image_size=16", "data.preset=plain",
                   "track=tensorboard", f"out_dir={tmp_path / 'runs'}", "name=timm", "plot.enabled=false", *SMALL,
                   cwd=tmp_path)  # figures and pages in trackers: tested with Lightning
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "timm"
    summary = json.loads((run_dir / "summary.json").read_text())
    images = load_data(DataConfig(name="imagefolder", root=str(tmp_path / "images"), image_size=16,
                                  preset="plain")).test
    x, labels = zip(*(images.dataset[i] for i in range(len(images.dataset))))
    with torch.no_grad():
        reference = F.cross_entropy(model(torch.stack(x)).double(), torch.tensor(labels))
    assert summary["center"]["loss"] == pytest.approx(float(reference), rel=1e-5)
    got = tensorboard_scalars(run_dir / "tensorboard")
    want = summary_scalars(summary)
    assert want and all(got[k] == pytest.approx(v, rel=1e-6, abs=1e-12) for k, v in want.items())


def test_unknown_timm_architecture_and_tracker_are_refused_in_one_line() -> None:
    pytest.importorskip("timm")
    from engine.config.schema import ModelConfig, RunConfig
    from engine.sources.models import build_model

    with pytest.raises(UserError, match=r"model.arch='resnet_nope' is not a timm architecture") as caught:
        build_model(ModelConfig(name="timm", arch="resnet_nope"), (3, 32, 32), 10)
    with pytest.raises(UserError, match=r"track='neptune' is not one of tensorboard, mlflow, wandb") as tracker:
        RunConfig(track="neptune")
    assert "\n" not in str(caught.value) + str(tracker.value)


@pytest.mark.parametrize(("modules", "extra", "call"), [
    (["timm"], "vision", "build"), (["lightning", "lightning.pytorch"], "lightning", "lightning"),
    (["wandb"], "track", "track")])
def test_a_missing_extra_is_named_in_one_line(modules: list[str], extra: str, call: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if the package were not installed
    monkeypatch.delitem(sys.modules, "engine.integrations.lightning", raising=False)
    with pytest.raises(UserError, match=rf"pip install 'landscape-engine\[{extra}\]'") as caught:
        if call == "build":
            from engine.config.schema import ModelConfig
            from engine.sources.models import build_model

            build_model(ModelConfig(name="timm", arch="resnet50"), (3, 32, 32), 10)
        elif call == "lightning":
            import engine.integrations.lightning  # noqa: F401
        else:
            from engine.app.trackers import check_tracker

            check_tracker("wandb")
    assert "\n" not in str(caught.value)


def test_importing_engine_loads_no_extra() -> None:
    code = ("import sys, engine, engine.integrations; "
            "print([m for m in ('lightning', 'mlflow', 'wandb', 'tensorboard', 'transformers', 'timm') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_spectrum_run_sends_its_numbers_with_errors_to_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    import engine
    from integration_fixtures import mlflow_scalars

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    torch.manual_seed(0)
    model = MLP(8, [6], 3)
    found = engine.spectrum(model, (torch.randn(64, 8), torch.randint(0, 3, (64,))), track="mlflow",
                            out_dir=str(tmp_path / "runs"), **{"hessian.top_k": 2, "hessian.steps": 10,
                                                               "hessian.slq_runs": 2, "hessian.slq_steps": 10,
                                                               "hessian.trace_samples": 4, "hessian.hutchpp_matvecs": 6,
                                                               "eval.progress": False, "plot.enabled": False})
    numbers = json.loads((Path(found.attrs["store"]).parent / "spectrum.json").read_text())
    want = summary_scalars(numbers)
    assert "landscape/trace_stderr" in want and want["landscape/trace_stderr"] > 0
    got = mlflow_scalars(uri)
    assert all(got[k] == pytest.approx(v, rel=1e-6, abs=1e-12) for k, v in want.items())


@pytest.mark.parametrize("criterion", [
    torch.nn.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5])),
    torch.nn.CrossEntropyLoss(ignore_index=1), torch.nn.NLLLoss()])
def test_a_modules_own_criterion_is_summed_over_the_items_it_averages(criterion: torch.nn.Module) -> None:
    from torch import nn

    from engine.integrations.callbacks import criterion_of

    holder = nn.Module()
    holder.criterion = criterion
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(-1))
    x, y = torch.randn(10, 4), torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])
    total, count = criterion_of(holder)(model, (x, y))
    with torch.no_grad():
        assert float(total) / float(count) == pytest.approx(float(criterion(model(x), y)), rel=1e-6)
    holder.criterion = nn.CrossEntropyLoss()
    assert criterion_of(holder) is holder.criterion  # the plain one: the engine's own cross_entropy (with accuracy)

"""engine.app.stages called alone, with configs from make_cfg and no run: preflight's refusals, the run's paths, the
eval split and its memory format, the Hessian's batches, the store spec, the trajectory note, the console."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.app import stages
from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.curvature.spectra import CURVATURE_METRICS
from engine.directions.kinds import Directions
from engine.directions.vectors import perturbed
from engine.sources.data import load_data
from engine.sources.losses import METRICS
from engine.sources.splits import Split
from engine.store.grid import make_levels, make_plan
from engine.store.layout import open_store
from engine.store.read import read_surface
from helpers import make_cfg

MAIN = DistEnv(0, 1, 0, torch.device("cpu"))


def test_preflight_passes_a_config_that_can_run(tmp_path: Path) -> None:
    cfg, _ = make_cfg(tmp_path)
    stages.preflight(cfg)
    assert not any(tmp_path.iterdir())


def _two_checkpoints(tmp_path: Path) -> str:
    folder = tmp_path / "traj"
    folder.mkdir()
    for k in (1, 2):
        torch.save({"state_dict": {}}, folder / f"epoch_{k:03d}.pt")
    (folder / "final.pt").touch()  # not part of a trajectory
    return f"direction.trajectory={folder}"


def _a_checkpoint(tmp_path: Path) -> str:
    (tmp_path / "a.pt").touch()
    return f"model.checkpoint={tmp_path / 'a.pt'}"


MISSING = [
    (["model.checkpoint=/no/such.pt"], "checkpoint /no/such.pt does not exist; give model.checkpoint=<an existing"),
    (["grid=line", "grid.resolution=[5]", "direction=interpolation", "direction.checkpoints=[/no/B.pt]"],
     "checkpoint /no/B.pt does not exist; give direction.checkpoints=<an existing file>"),
    (["direction=plane", f"direction.checkpoints=[{__file__},/no/C.pt]"], "checkpoint /no/C.pt does not exist"),
    (["direction=file", "direction.path=/no/dirs.pt"],
     "direction file /no/dirs.pt does not exist; give direction.path="),
    (["direction=pca", _two_checkpoints], "direction=pca needs at least 3 checkpoints (epoch_*.pt) in"),
    (["direction=pca", _a_checkpoint], "checkpoints does not exist"),  # no trajectory: this run's checkpoints/
]


@pytest.mark.parametrize(("overrides", "message"), MISSING, ids=[m[:32] for _, m in MISSING])
def test_preflight_refuses_missing_inputs_in_one_line(overrides, message, tmp_path: Path) -> None:
    overrides = [o(tmp_path) if callable(o) else o for o in overrides]
    cfg, _ = make_cfg(tmp_path / "out", *overrides)
    with pytest.raises(UserError) as refused:
        stages.preflight(cfg)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    assert not (tmp_path / "out").exists()


def test_preflight_refuses_autocast_without_a_cuda_device(tmp_path: Path) -> None:
    cfg, _ = make_cfg(tmp_path, "eval.precision=bf16")  # eval.device=auto: the CLI cannot tell yet
    if torch.cuda.is_available():
        stages.preflight(cfg)
    else:
        with pytest.raises(UserError, match=r"eval\.precision=bf16 is autocast on CUDA devices and none is visible"):
            stages.preflight(cfg)


def test_run_folder_and_store_path(tmp_path: Path) -> None:
    cfg, _ = make_cfg(tmp_path, "name=here")
    assert stages.run_dir_of(cfg) == tmp_path / "here"
    assert stages.store_path_of(cfg) == tmp_path / "here" / "landscape.zarr"
    elsewhere, _ = make_cfg(tmp_path, "name=here", f"store.path={tmp_path / 'other.zarr'}")
    assert stages.store_path_of(elsewhere) == tmp_path / "other.zarr"


def test_eval_split_is_a_seeded_subsample_of_the_chosen_split(tmp_path: Path) -> None:
    cfg, _ = make_cfg(tmp_path)
    data = load_data(cfg.data)
    split = stages.eval_split(cfg, data)
    assert len(split.y) == 64 and split.x.shape[1:] == data.test.x.shape[1:]
    again = stages.eval_split(cfg, data)
    assert torch.equal(split.x, again.x) and torch.equal(split.y, again.y)

    def rows_of(part: Split, whole: Split) -> bool:
        flat = whole.x.flatten(1)
        return all(bool((flat == row).all(1).any()) for row in part.x.flatten(1))

    assert rows_of(split, data.test)
    train_cfg, _ = make_cfg(tmp_path, "eval.split=train", "eval.samples=48")
    train = stages.eval_split(train_cfg, data)
    assert len(train.y) == 48 and rows_of(train, data.train)
    other_seed, _ = make_cfg(tmp_path, "data.seed=5")
    assert not torch.equal(stages.eval_split(other_seed, load_data(other_seed.data)).y[:16], split.y[:16])
    everything, _ = make_cfg(tmp_path, "eval.samples=null")
    assert len(stages.eval_split(everything, data).y) == len(data.test.y)


def test_channels_last_for_images_unless_configured(tmp_path: Path) -> None:
    images = Split(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    flat = Split(images.x.flatten(1), images.y)
    auto, _ = make_cfg(tmp_path)
    off, _ = make_cfg(tmp_path, "eval.channels_last=false")
    on, _ = make_cfg(tmp_path, "eval.channels_last=true")
    assert stages.uses_channels_last(auto, images) and not stages.uses_channels_last(auto, flat)
    assert not stages.uses_channels_last(off, images) and stages.uses_channels_last(on, flat)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    weight = model[0].weight
    moved, split = stages.to_channels_last(model, images)
    assert moved[0].weight is weight and weight.is_contiguous(memory_format=torch.channels_last)  # same parameters
    assert split.x.is_contiguous(memory_format=torch.channels_last) and torch.equal(split.x, images.x)


def test_hessian_batches_only_when_asked_for(tmp_path: Path) -> None:
    split = Split(torch.randn(300, 1, 8, 8), torch.zeros(300, dtype=torch.long))
    plain, _ = make_cfg(tmp_path)
    assert stages.hessian_stage_batches(plain, split, MAIN) == []
    assert sum(len(y) for _, y in stages.hessian_stage_batches(plain, split, MAIN, always=True)) == 300
    for asked in (["hessian.spectrum=true"], ["hessian.curvature=true"], ["direction=hessian"]):
        cfg, _ = make_cfg(tmp_path, *asked, "hessian.samples=200", "hessian.batch_size=64")
        batches = stages.hessian_stage_batches(cfg, split, MAIN)
        assert [len(y) for _, y in batches] == [64, 64, 64, 8], asked


def _tiny_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    return perturbed(model, "states")


def test_store_spec_holds_what_the_store_is_made_from(tmp_path: Path) -> None:
    cfg, resolved = make_cfg(tmp_path)
    levels = make_levels(cfg.grid)
    target = _tiny_target()
    made = Directions([[torch.ones_like(t) for t in target.theta] for _ in range(2)])
    spec = stages.store_spec(cfg, resolved, levels, target, made, "f00d", METRICS)
    assert spec.config is resolved and spec.levels is levels and spec.fingerprint == "f00d"
    assert spec.names == target.names and spec.shapes == [tuple(t.shape) for t in target.tensors]
    assert spec.directions is made.directions and spec.metrics == METRICS and spec.arrays == {}
    assert spec.attrs == {"markers": {"theta*": [0.0, 0.0]}, "axis_labels": ["d1", "d2"],
                          "log_space": ["1.running_var"]}
    curv, curv_resolved = make_cfg(tmp_path, "hessian.curvature=true", "grid=line", "grid.resolution=[5]")
    trajectory = np.array([[0.5, 0.1], [0.0, 0.0]])
    pca = Directions(made.directions, markers={"final": [0.0, 0.0]}, axis_labels=["PC1", "PC2"],
                     trajectory=trajectory, explained=[0.8, 0.2])
    weights = perturbed(nn.Linear(4, 3), "weights")
    spec = stages.store_spec(curv, curv_resolved, make_levels(curv.grid), weights,
                             Directions([[torch.ones_like(t) for t in weights.theta]]), "f00d", ("loss", "mae"))
    assert spec.metrics == ("loss", "mae", *CURVATURE_METRICS) and spec.attrs["markers"] == {"theta*": [0.0]}
    assert "log_space" not in spec.attrs
    spec = stages.store_spec(cfg, resolved, levels, target, pca, "f00d", METRICS)
    assert spec.attrs["markers"] == {"final": [0.0, 0.0]} and spec.attrs["explained_variance"] == [0.8, 0.2]
    assert spec.arrays["trajectory/coords"] is trajectory
    open_store(tmp_path / "landscape.zarr", spec)  # and the store takes it
    assert read_surface(tmp_path / "landscape.zarr").attrs["axis_labels"] == ["PC1", "PC2"]


def test_trajectory_note_only_when_the_trajectory_leaves_the_grid() -> None:
    plan = make_plan(make_cfg(Path("/unused"))[0].grid)  # x and y in [-1, 1]
    assert stages.trajectory_note(Directions([]), plan) is None
    inside = Directions([], trajectory=np.array([[-1.0, 0.5], [0.0, 0.0], [0.5, 1.0]]))
    assert stages.trajectory_note(inside, plan) is None  # on the edge is inside
    beyond = Directions([], trajectory=np.array([[-3.0, 0.5], [0.0, 0.0], [0.5, 2.0]]))
    assert stages.trajectory_note(beyond, plan) == (
        "note: the projected trajectory spans x [-3, 0.5], y [0, 2]: beyond the grid; grid.x=[-3.35,0.85] "
        "grid.y=[-0.2,2.2] shows it whole")


def test_console_prints_on_rank_0_only_when_logging(capsys: pytest.CaptureFixture[str]) -> None:
    stages.console(True, MAIN)("shown")
    stages.console(False, MAIN)("not shown")
    stages.console(True, DistEnv(1, 2, 1, torch.device("cpu")))("not shown either")
    assert capsys.readouterr().out == "shown\n"

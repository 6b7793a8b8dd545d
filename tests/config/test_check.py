"""engine.config.check and the schema: command lines and overrides checked before Hydra runs; each bad input is one
clear line from the CLI (run in a subprocess, as a user runs it) and leaves no store."""

from __future__ import annotations

import pytest
import torch

from engine.core.errors import UserError
from engine.sources.models import CifarResNet
from helpers import TINY, flags_first, make_cfg, run_cli


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
    (["grid.nope=1"], "unknown config key 'grid.nope' (grid has resolution, x, y, tile, preview, auto_rise)"),
    (["+grid.nope=1"], "unknown config key 'grid.nope'"),
    (["eval.sample=3"], "unknown config key 'eval.sample' (did you mean eval.samples?)"),
    (["evl.samples=3"], "unknown config key 'evl.samples' (did you mean eval.samples?)"),
    (["eval.samples=many"], "eval.samples=many: Value 'many' of type 'str' could not be converted to Integer"),
    (["model=vgg7"], "no config 'vgg7' in group model; options: custom, hf, mlp,"),
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


@pytest.mark.parametrize("argv", [
    ["+model.kwargs.depth=3", "+data.kwargs={root: /tmp}"],
    ["model=torchvision", "model.arch=resnet18", "model.kwargs.num_classes=10", "loss=custom", "loss._target_=m.f",
     "loss.kwargs.scale=2"],  # the free-form dicts take new keys without a +
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

"""engine.sources.checkpoints: both checkpoint layouts read, and a checkpoint of another architecture refused in one
line naming the mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from engine.core.errors import UserError
from engine.sources.checkpoints import load_checkpoint, load_state
from engine.sources.models import CifarResNet


def test_load_state_reads_both_layouts_and_refuses_another_architecture(tmp_path: Path) -> None:
    model = nn.Linear(5, 3)
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "wrapped.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    for name in ("wrapped.pt", "bare.pt"):
        state = load_state(tmp_path / name, model)
        assert state.keys() == model.state_dict().keys()
        torch.testing.assert_close(state["weight"], model.weight.detach())
    torch.save({"state_dict": nn.Linear(4, 3).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"other\.pt.*weight") as err:
        load_state(tmp_path / "other.pt", model)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"missing\.pt does not exist"):
        load_state(tmp_path / "missing.pt", model)


def test_checkpoint_mismatch_names_keys_and_shapes(tmp_path):
    small, wide = CifarResNet(8, 10, 1, 4, True), CifarResNet(8, 10, 1, 8, True)
    torch.save({"state_dict": small.state_dict()}, tmp_path / "small.pt")
    with pytest.raises(UserError, match=r"shape conv1.weight \(4, 1, 3, 3\) vs model \(8, 1, 3, 3\)"):
        load_checkpoint(wide, tmp_path / "small.pt")
    torch.save(CifarResNet(8, 10, 1, 4, False).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match=r"missing layer2\.0\.proj\.0\.weight"):
        load_checkpoint(small, tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(small, tmp_path / "junk.pt")
    load_checkpoint(small, tmp_path / "small.pt")

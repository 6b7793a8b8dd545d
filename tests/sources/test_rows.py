"""Weights read row block by row block (what a sharded load's ranks do): a model built with its parameters on the
meta device and its buffers real, and rows of one tensor read from a torch file, a .safetensors file and a Hugging
Face folder whose weights are split over shards, equal to the same rows of the whole tensor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.core.errors import UserError
from engine.sources.rows import RowReader, check_rows_fit, parameters_on_meta


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))


def test_parameters_are_built_on_meta_and_buffers_are_real() -> None:
    with parameters_on_meta():
        model = small()
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(model[1].running_var, torch.ones(5)) and model[1].running_mean.device.type == "cpu"
    assert next(small().parameters()).device.type == "cpu"  # the patch is gone once the block ends


@pytest.fixture()
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in small().state_dict().items()}


def test_rows_from_a_torch_file_a_safetensors_file_and_a_sharded_folder(tmp_path: Path,
                                                                          state: dict[str, torch.Tensor]) -> None:
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "a.pt")
    save_file(state, str(tmp_path / "a.safetensors"))
    folder = tmp_path / "hf"
    folder.mkdir()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, str(folder / file))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in halves.items() for k in keys}}))
    for source in (tmp_path / "a.pt", tmp_path / "a.safetensors", folder):
        reader = RowReader(source)
        assert reader.names() == set(state)
        for name, whole in state.items():
            assert reader.shape(name) == tuple(whole.shape)
            assert torch.equal(reader.rows(name), whole)
            if whole.dim():
                assert torch.equal(reader.rows(name, 1, 3), whole[1:3])


def test_a_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    torch.save({k: v for k, v in state.items() if k != "2.weight"}, tmp_path / "short.pt")
    with pytest.raises(UserError, match=r"does not fit the model: missing 2\.weight; check model"):
        check_rows_fit(RowReader(tmp_path / "short.pt"), shapes, lambda name: False)
    check_rows_fit(RowReader(tmp_path / "short.pt"), shapes, lambda name: name == "2.weight")  # tied: saved once
    torch.save({**state, "0.weight": torch.zeros(4, 6)}, tmp_path / "wide.pt")
    with pytest.raises(UserError, match=r"shape 0\.weight \(4, 6\) vs model \(5, 6\)"):
        check_rows_fit(RowReader(tmp_path / "wide.pt"), shapes, lambda name: False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds no model\.safetensors: a sharded load reads safetensors"):
        RowReader(tmp_path / "empty")

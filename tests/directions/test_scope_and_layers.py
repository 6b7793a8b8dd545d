"""engine.directions.vectors and factory: which tensors a direction covers (include / exclude / frozen, tied weights,
one-line refusals) and how filter / layer normalization treats each kind of layer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from engine.config.schema import DirectionConfig
from engine.core.errors import UserError
from engine.directions.factory import make_directions
from engine.directions.vectors import PerturbedTensors, normalize, output_rows, perturbed, random_raw
from engine.sweep.perturb import Perturber

NORMS = ("bn", "ln", "gn", "rms")  # the normalization layers whose weights and biases ignore=biasbn zeroes


def conv1d(nx: int, nf: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(nf, nx)  # weight [nx, nf]: [in, out]


class Layers(nn.Module):
    """One layer of each kind the normalization tells apart, every tensor random (no norm is trivially 0 or 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.lin, self.emb = nn.Conv2d(3, 4, 3), nn.Linear(5, 6), nn.Embedding(7, 5)
        self.c1d = conv1d(5, 6)
        self.bn, self.ln, self.gn, self.rms = nn.BatchNorm1d(6), nn.LayerNorm(6), nn.GroupNorm(2, 6), nn.RMSNorm(6)
        self.frozen = nn.Linear(2, 2)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.frozen.requires_grad_(False)


def directions(model: nn.Module, tmp_path: Path, ndim: int = 1, **keys: Any) -> tuple[PerturbedTensors, Any]:
    """The perturbed tensors and random directions of a DirectionConfig with these keys."""
    d = DirectionConfig(**keys)
    target = perturbed(model, d.over, d.include, d.exclude, d.frozen)
    return target, make_directions(d, model, target, ndim, tmp_path)


def moved_by_a_step(model: nn.Module, tmp_path: Path, **keys: Any) -> list[str]:
    """The state entries a sweep step (1, 0) changes, with directions of these keys (ignore=none: biases move)."""
    before = {n: t.clone() for n, t in model.state_dict().items()}
    target, made = directions(model, tmp_path, ndim=2, norm="layer", ignore="none", **keys)
    Perturber(target.tensors, made.directions).set((1.0, 0.0))
    return sorted(n for n, t in model.state_dict().items() if not torch.equal(t, before[n]))


@pytest.mark.parametrize("include, exclude, frozen, kept", [
    ([], [], False, ["bn.bias", "bn.weight", "c1d.bias", "c1d.weight", "conv.bias", "conv.weight", "emb.weight",
                     "gn.bias", "gn.weight", "lin.bias", "lin.weight", "ln.bias", "ln.weight", "rms.weight"]),
    ([r"^conv\.", r"lin\.weight$"], [], False, ["conv.bias", "conv.weight", "lin.weight"]),
    ([r"^(conv|lin)\."], [r"bias$"], False, ["conv.weight", "lin.weight"]),
    ([r"frozen|emb"], [], True, ["emb.weight", "frozen.bias", "frozen.weight"]),
    ([r"weight$"], [r"^(bn|ln|gn|rms|c1d|conv|emb)\."], True, ["frozen.weight", "lin.weight"]),
], ids=["all", "include", "include-exclude", "frozen", "frozen-exclude"])
def test_include_exclude_and_frozen_leave_exactly_those_tensors(include: list[str], exclude: list[str], frozen: bool,
                                                                 kept: list[str], tmp_path: Path) -> None:
    """include / exclude / frozen keep exactly the intended tensors, and a sweep step moves only those."""
    model = Layers()
    target = perturbed(model, "weights", include, exclude, frozen)
    assert sorted(target.names) == kept
    params = dict(model.named_parameters())
    assert all(t is params[n] for n, t in zip(target.names, target.tensors))
    assert moved_by_a_step(model, tmp_path, include=include, exclude=exclude, frozen=frozen) == kept


def test_frozen_parameters_stay_put_unless_asked_for(tmp_path: Path) -> None:
    """requires_grad=False parameters are left at theta* by default and moved with frozen=True."""
    assert not {"frozen.weight", "frozen.bias"} & set(moved_by_a_step(Layers(), tmp_path))
    assert {"frozen.weight", "frozen.bias"} <= set(moved_by_a_step(Layers(), tmp_path, frozen=True))


class Shared(nn.Module):
    """Two linear layers sharing one weight Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
        self.b.weight = self.a.weight


def test_a_tied_weight_is_covered_once_and_moved_once(tmp_path: Path) -> None:
    """A Parameter shared by two modules appears once, under its first name, and a step moves it by d, not 2 d."""
    model = Shared()
    theta = model.a.weight.detach().clone()
    target, made = directions(model, tmp_path, ndim=2, norm="layer", ignore="none")
    assert target.names == ["a.weight", "a.bias", "b.bias"]
    Perturber(target.tensors, made.directions).set((1.0, 0.0))
    torch.testing.assert_close(model.b.weight.detach(), theta + made.directions[0][0], rtol=0, atol=0)


def test_gpt2_head_tied_to_its_embedding_appears_once_and_conv1d_is_per_column() -> None:
    """GPT-2's lm_head.weight (tied to wte) is covered once, as transformer.wte.weight; its Conv1D weights use dim 1."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    assert model.lm_head.weight is model.transformer.wte.weight
    target = perturbed(model, "weights")
    assert "transformer.wte.weight" in target.names and "lm_head.weight" not in target.names
    assert len({id(t) for t in target.tensors}) == len(target.tensors) == len(list(model.parameters()))
    assert target.rows is not None
    transposed = sorted(n for n, r in zip(target.names, target.rows) if r == 1)
    layers = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    assert transposed == [f"transformer.h.0.{m}.weight" for m in layers]


@pytest.mark.parametrize("include, exclude, parts", [
    ([r"no_such_layer"], [], ["direction.include", "'no_such_layer'", "matches no parameter"]),
    ([], [r"no_such_layer"], ["direction.exclude", "'no_such_layer'", "matches no parameter"]),
    ([r"conv.(weight"], [], ["direction.include", "'conv.(weight'", "not a regular expression"]),
    ([], [r"[bias"], ["direction.exclude", "'[bias'", "not a regular expression"]),
    ([r"^conv\."], [r"conv"], ["direction.include=['^conv\\\\.']", "direction.exclude=['conv']", "leave no tensor"]),
], ids=["include-no-match", "exclude-no-match", "include-bad-regex", "exclude-bad-regex", "nothing-left"])
def test_scopes_that_cannot_work_are_refused_in_one_line(include: Sequence[str], exclude: Sequence[str],
                                                          parts: list[str]) -> None:
    """A pattern matching nothing, an invalid regex, and a pair leaving nothing are each refused in one line."""
    with pytest.raises(UserError) as err:
        perturbed(Layers(), "weights", include, exclude)
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def rows_of(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t's slices along dim, one flattened row each."""
    return t.movedim(dim, 0).reshape(t.shape[dim], -1)


def parallel(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a is a positive multiple of b (flattened)."""
    return bool(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 1 - 1e-6)


def test_filter_norm_per_output_filter_row_or_column(tmp_path: Path) -> None:
    """norm=filter: Conv2d per filter, Linear and Embedding per row, Conv1D per column; ignore=biasbn zeroes rank 1."""
    model = Layers()
    target, made = directions(model, tmp_path, norm="filter", ignore="biasbn")
    assert target.rows == output_rows(model, target.names)
    assert dict(zip(target.names, target.rows)) == {n: int(n == "c1d.weight") for n in target.names}
    (raw,) = random_raw(target.theta, 1, DirectionConfig().seed)
    for name, d, w, r in zip(target.names, made.directions[0], target.theta, raw):
        if w.dim() == 1:
            assert name.endswith("bias") or name.split(".")[0] in NORMS
            assert not d.any(), name
            continue
        dim = int(name == "c1d.weight")
        torch.testing.assert_close(rows_of(d, dim).norm(dim=1), rows_of(w, dim).norm(dim=1), rtol=1e-5, atol=0)
        assert all(parallel(a, b) for a, b in zip(rows_of(d, dim), rows_of(r, dim))), name
    c1d = dict(zip(target.names, made.directions[0]))["c1d.weight"]
    assert not torch.allclose(c1d.norm(dim=1), model.c1d.weight.detach().norm(dim=1), rtol=1e-2)


@pytest.mark.parametrize("norm", ["filter", "layer"])
def test_ignore_none_scales_rank_1_tensors_whole(norm: str, tmp_path: Path) -> None:
    """ignore=none: every bias and normalization weight is scaled whole to its own norm (filter and layer)."""
    target, made = directions(Layers(), tmp_path, norm=norm, ignore="none")
    (raw,) = random_raw(target.theta, 1, DirectionConfig().seed)
    ranked_1 = [(n, d, w, r) for n, d, w, r in zip(target.names, made.directions[0], target.theta, raw) if w.dim() == 1]
    assert {n.split(".")[0] for n, *_ in ranked_1} >= set(NORMS) | {"conv", "lin", "c1d"}
    for name, d, w, r in ranked_1:
        assert d.norm().item() == pytest.approx(w.norm().item(), rel=1e-5), name
        assert parallel(d, r), name


def test_layer_norm_scales_every_tensor_whole(tmp_path: Path) -> None:
    """norm=layer: each tensor (filters, rows and Conv1D columns together) has theta*'s norm, along the raw draw."""
    target, made = directions(Layers(), tmp_path, norm="layer", ignore="biasbn")
    (raw,) = random_raw(target.theta, 1, DirectionConfig().seed)
    for name, d, w, r in zip(target.names, made.directions[0], target.theta, raw):
        if w.dim() == 1:
            assert not d.any(), name
            continue
        assert d.norm().item() == pytest.approx(w.norm().item(), rel=1e-5), name
        assert parallel(d, r), name
        assert not torch.allclose(rows_of(d, 0).norm(dim=1), rows_of(w, 0).norm(dim=1), rtol=1e-2), name


def test_normalize_on_hand_made_tensors() -> None:
    """normalize alone: a conv filter's and a [in, out] weight's slices take theta*'s norms along the given dim."""
    g = torch.Generator().manual_seed(4)
    conv_w, c1d_w, bias = (torch.randn(shape, generator=g) for shape in ((4, 3, 3, 3), (5, 6), (6,)))
    raw = [torch.randn(t.shape, generator=g) for t in (conv_w, c1d_w, bias)]
    conv_d, c1d_d, bias_d = normalize(raw, [conv_w, c1d_w, bias], "filter", "biasbn", rows=[0, 1, 0])
    for i in range(4):
        assert conv_d[i].norm().item() == pytest.approx(conv_w[i].norm().item(), rel=1e-5)
    for j in range(6):
        assert c1d_d[:, j].norm().item() == pytest.approx(c1d_w[:, j].norm().item(), rel=1e-5)
    assert not bias_d.any()

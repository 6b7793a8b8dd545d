"""Per-block curvature: how parameters are grouped (layer, module, name patterns), and each block's lambda_max,
lambda_min and trace against the exact float64 diagonal block of the Hessian and of the GGN."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from exact import exact_hessian, explicit_ggn
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.curvature.blocks import ROOT, parameter_blocks
from engine.curvature.spectra import block_products, compute_spectrum

MAIN = DistEnv(0, 1, 0, torch.device("cpu"))


class Net(nn.Module):
    """Parameters owned by the net itself, by a nested Sequential, and a tensor shared by two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3, dtype=torch.float64))
        self.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)
        self.tied = nn.Linear(6, 3)
        self.tied.weight = self.head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.body(x))
        return (self.head(h) + self.tied(h)) * self.scale


def _names(model: nn.Module, blocks: list) -> list[tuple[str, list[str]]]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [(b.name, [by_id[id(p)] for p in b.params]) for b in blocks]


def test_layer_module_and_pattern_blocks() -> None:
    model = Net().double()
    params = list(model.parameters())
    assert _names(model, parameter_blocks(model, params, "layer")) == [
        (ROOT, ["scale"]), ("body.0", ["body.0.weight", "body.0.bias"]), ("body.2", ["body.2.weight", "body.2.bias"]),
        ("head", ["head.weight", "head.bias"]), ("tied", ["tied.bias"])]  # the shared weight goes to its first owner
    assert _names(model, parameter_blocks(model, params, "module")) == [
        (ROOT, ["scale"]), ("body", ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]),
        ("head", ["head.weight", "head.bias"]), ("tied", ["tied.bias"])]
    assert _names(model, parameter_blocks(model, params, [r"\.weight$", "^body"])) == [
        (r"\.weight$", ["body.0.weight", "body.2.weight", "head.weight"]),
        ("^body", ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"])]
    some = [model.head.bias, model.body[0].weight]  # only the Hessian's parameters, in its order
    assert _names(model, parameter_blocks(model, some, "layer")) == [("body.0", ["body.0.weight"]),
                                                                     ("head", ["head.bias"])]
    with pytest.raises(UserError, match=re.escape("no parameter name matches 'conv'")):
        parameter_blocks(model, params, ["conv"])
    with pytest.raises(UserError, match="not a regular expression"):
        parameter_blocks(model, params, ["("])
    with pytest.raises(UserError, match="model's own"):
        parameter_blocks(model, [nn.Parameter(torch.zeros(2))], "layer")


def test_config_checks_blocks_matrix_and_tolerance() -> None:
    assert HessianConfig(blocks=["a", "b"]).blocks == ["a", "b"]
    for bad, match in (({"blocks": "layers"}, "layer, module"), ({"blocks": []}, "non-empty"),
                       ({"matrix": "fisher"}, "hessian.matrix"), ({"tolerance": 0.0}, "tolerance")):
        with pytest.raises(UserError, match=match):
            HessianConfig(**bad)  # type: ignore[arg-type]


def _mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A 3-layer tanh MLP in float64 (56 + 42 + 21 parameters), three batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (40,))
    return model, [(x[:13], y[:13]), (x[13:30], y[13:30]), (x[30:], y[30:])]


@pytest.mark.parametrize("matrix", ["hessian", "ggn"])
def test_block_spectra_match_the_exact_diagonal_blocks(matrix: str) -> None:
    model, batches = _mlp()
    full = exact_hessian(model, batches) if matrix == "hessian" else explicit_ggn(model, batches)
    cfg = HessianConfig(blocks="layer", matrix=matrix, steps=60, rtol=None, trace_samples=50, top_k=2,
                        hutchpp_matvecs=6, slq_runs=2, slq_steps=5)
    spectrum = compute_spectrum(model, list(model.parameters()), batches, cfg, MAIN)
    b = spectrum.blocks
    assert b is not None and b.names == ["0", "2", "4"] and list(b.sizes) == [56, 54, 21] and b.kind == "layer"
    start = 0
    for i, size in enumerate(b.sizes):
        block = full[start : start + size, start : start + size]
        start += size
        exact = np.linalg.eigvalsh(block)
        scale = np.abs(exact).max()
        assert b.lambda_max[i] == pytest.approx(exact[-1], rel=1e-9)
        assert abs(b.lambda_min[i] - exact[0]) <= b.lambda_min_bound[i] + 1e-12 * scale
        assert b.lambda_max_bound[i] <= 1e-9 * scale  # steps >= the block's size: Lanczos spans it
        if size <= cfg.trace_samples:
            assert b.trace[i] == pytest.approx(np.trace(block), rel=1e-10) and b.trace_stderr[i] == 0
        else:  # Hutchinson on the block, with its standard error
            assert b.trace_stderr[i] > 0 and abs(b.trace[i] - np.trace(block)) < 4 * b.trace_stderr[i]
        if matrix == "ggn":
            assert b.lambda_min[i] >= -1e-12 * scale
    assert 0 < b.matvecs <= sum(block_products(int(n), cfg) for n in b.sizes)  # Lanczos ends on a block's rank
    numbers = spectrum.numbers()["blocks"]
    assert numbers["names"] == b.names and numbers["lambda_max"] == list(b.lambda_max)
    if matrix == "hessian":  # the last layer enters linearly: its Hessian block is its GGN block
        tail = explicit_ggn(model, batches)[-21:, -21:]
        assert b.lambda_max[-1] == pytest.approx(np.linalg.eigvalsh(tail)[-1], rel=1e-9)


def test_block_products_are_planned_on_the_bar(capfd: pytest.CaptureFixture[str]) -> None:
    model, batches = _mlp()
    cfg = HessianConfig(blocks=["^0\\.", "^4\\."], steps=10, rtol=None, top_k=2, trace_samples=30, hutchpp_matvecs=6,
                        slq_runs=2, slq_steps=5)
    spectrum = compute_spectrum(model, list(model.parameters()), batches, cfg, MAIN, progress=True)
    err = capfd.readouterr().err
    blocks = 10 + 30 + 10 + 21  # block 0: Lanczos, Hutchinson over 56 > 30; block 4: Lanczos, exact over 21
    assert spectrum.blocks is not None and spectrum.blocks.matvecs == blocks
    total = 10 + 30 + 6 + 2 * 5 + blocks
    assert spectrum.matvecs == total - blocks and f"{total}/{total}" in err and "blocks" in err

"""The generalized Gauss-Newton operator against an explicit J^T H_L J (float64, Jacobian by jacrev) for the three
built-in losses, its positive semi-definite spectrum, its kept graphs, and the refusal of custom losses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from exact import explicit_ggn, jacobian, softmax_block
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.curvature.ggn import GGNOperator
from engine.curvature.hessian import slq_nodes
from engine.curvature.spectra import compute_spectrum
from engine.sources.loss_kinds import IGNORE, CausalLM, CustomLoss, MeanSquaredError
from engine.sources.losses import CROSS_ENTROPY, Loss
from helpers import make_cfg

MAIN = DistEnv(0, 1, 0, torch.device("cpu"))


def _classifier() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    return model, [(x[:13], torch.randint(0, 3, (13,))), (x[13:], torch.randint(0, 3, (27,)))]


class TinyLM(nn.Module):
    """Token embedding, a tanh mixing layer and a vocabulary head: logits [batch, tokens, vocabulary]."""

    def __init__(self, vocab: int = 7, width: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(input_ids))))


def _products(op: GGNOperator, ggn: torch.Tensor) -> None:
    for seed in range(3):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), ggn @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("keep_graph", [False, True])
def test_cross_entropy_products_match_explicit_jt_h_j(keep_graph: bool) -> None:
    model, batches = _classifier()
    op = GGNOperator(model, list(model.parameters()), batches, CROSS_ENTROPY, keep_graph=keep_graph)
    _products(op, torch.from_numpy(explicit_ggn(model, batches)))
    assert op.calls == 3


def test_mse_products_match_explicit_jt_h_j() -> None:
    model, batches = _classifier()
    targets = [(x, torch.randn(len(x), 3, dtype=torch.float64)) for x, _ in batches]
    _, jac = jacobian(model, (torch.cat([x for x, _ in targets]),))
    ggn = jac.T @ jac * (2.0 / 3) / 40  # each item's mean over 3 outputs: H_L = 2/3 I, then the mean over 40
    _products(GGNOperator(model, list(model.parameters()), targets, MeanSquaredError()), ggn)


def test_causal_lm_products_match_explicit_jt_h_j_with_padding() -> None:
    torch.manual_seed(3)
    model = TinyLM().double().eval()
    ids = torch.randint(0, 7, (3, 5))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0  # padding: not predicted
    batches = [{"input_ids": ids[:2], "attention_mask": mask[:2]}, {"input_ids": ids[2:], "attention_mask": mask[2:]}]
    z, jac = jacobian(model, {"input_ids": ids})
    predicted = torch.zeros(3, 5, dtype=torch.bool)
    predicted[:, :-1] = ids.masked_fill(mask == 0, IGNORE)[:, 1:] != IGNORE
    h = softmax_block(z) * predicted.reshape(-1).repeat_interleave(7).double()[:, None]
    ggn = jac.T @ h @ jac / predicted.sum()
    _products(GGNOperator(model, list(model.parameters()), batches, CausalLM()), ggn)


def test_kept_linearization_follows_weight_changes() -> None:
    model, batches = _classifier()
    op = GGNOperator(model, list(model.parameters()), batches, keep_graph=True)
    v = torch.randn(op.size, dtype=torch.float64)
    op.matvec(v)
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # an in-place perturbation: a new point
    torch.testing.assert_close(op.matvec(v), torch.from_numpy(explicit_ggn(model, batches)) @ v, rtol=1e-10,
                               atol=1e-12)


def test_ggn_spectrum_is_positive_semi_definite() -> None:
    model, batches = _classifier()
    exact = np.linalg.eigvalsh(explicit_ggn(model, batches))
    scale = exact[-1]
    assert exact[0] >= -1e-12 * scale  # J^T H_L J, H_L PSD
    cfg = HessianConfig(matrix="ggn", steps=53, rtol=None, top_k=3, trace_samples=10, hutchpp_matvecs=9, slq_runs=3,
                        slq_steps=53)
    spectrum = compute_spectrum(model, list(model.parameters()), batches, cfg, MAIN)
    np.testing.assert_allclose(spectrum.eigenvalues, exact[::-1][:3], rtol=1e-9)
    assert spectrum.lambda_min >= -1e-10 * scale and spectrum.matrix == "ggn"
    assert spectrum.nodes.min() >= -1e-10 * scale
    assert spectrum.numbers()["matrix"] == "ggn"
    nodes, _ = slq_nodes(GGNOperator(model, list(model.parameters()), batches), 2, 20, seed=4)
    assert nodes.min() >= -1e-10 * scale


def test_custom_loss_is_refused_in_one_line(tmp_path: Any) -> None:
    model, batches = _classifier()
    custom: Loss = CustomLoss(lambda m, b: (m(b[0]).sum(), len(b[0])), "tests.f", {})
    with pytest.raises(UserError, match=r"hessian\.matrix=ggn needs a loss of the model's output.*use hessian\."
                                        r"matrix=hessian"):
        GGNOperator(model, list(model.parameters()), batches, custom)
    with pytest.raises(UserError, match="loss=custom computes its value inside its own function"):
        make_cfg(tmp_path, "loss=custom", "loss._target_=helpers.DataDependent", "hessian.matrix=ggn")

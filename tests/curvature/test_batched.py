"""The sharpness ascents' loss taken one batch's graph at a time: one batch gives the numbers of a plain loss_fn bit for
bit, several agree with it to float32 rounding (the gradient is added in batch order), the caller's .grad is kept,
and the batch size follows the measured graph bytes per sample and the room given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.curvature.adaptive import adaptive_sharpness
from engine.curvature.batched import MAX_BATCH, BatchedLoss, gradient_batch_size, graph_bytes
from engine.curvature.sharpness import epsilon_sharpness
from engine.sources.losses import CROSS_ENTROPY


def _model_and_data(dtype: torch.dtype = torch.float64) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4)).to(dtype)
    return model, torch.randn(40, 6, dtype=dtype), torch.randint(0, 4, (40,))


def _plain(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    return lambda: nn.functional.cross_entropy(model(x), y, reduction="sum") / len(y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_batch_is_the_plain_loss_bit_for_bit_and_several_agree(dtype: torch.dtype) -> None:
    model, x, y = _model_and_data(dtype)
    params = list(model.parameters())
    one = BatchedLoss(model, [(x, y)], CROSS_ENTROPY)
    three = BatchedLoss(model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, 40, 16)], CROSS_ENTROPY)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    plain_eps = epsilon_sharpness(_plain(model, x, y), params, 1e-2, 6, seed=2)
    assert epsilon_sharpness(one, params, 1e-2, 6, seed=2) == plain_eps
    for key, value in epsilon_sharpness(three, params, 1e-2, 6, seed=2).items():
        assert value == pytest.approx(plain_eps[key], rel=tol, abs=tol)
    for norm in ("inf", "2"):
        plain = adaptive_sharpness(_plain(model, x, y), params, 0.05, norm, 5, 0.02, 4, seed=1)
        assert adaptive_sharpness(one, params, 0.05, norm, 5, 0.02, 4, seed=1) == plain
        for key, value in adaptive_sharpness(three, params, 0.05, norm, 5, 0.02, 4, seed=1).items():
            assert value == pytest.approx(plain[key], rel=tol, abs=tol) if isinstance(value, float) else \
                value == plain[key]
    with torch.no_grad():
        assert float(three()) == pytest.approx(float(_plain(model, x, y)()), rel=tol)


def test_the_callers_gradients_are_kept_and_the_weights_restored() -> None:
    model, x, y = _model_and_data()
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 7.0)
    before = [p.detach().clone() for p in params]
    loss = BatchedLoss(model, [(x[:20], y[:20]), (x[20:], y[20:])], CROSS_ENTROPY)
    out = epsilon_sharpness(loss, params, 1e-2, 4)
    assert out["max_loss"] > out["loss"]
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in params)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_batch_size_follows_the_graph_bytes_per_sample_and_the_room() -> None:
    model, x, y = _model_and_data(torch.float32)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:n], y[:n]

    per_sample = graph_bytes(model, sample(2), CROSS_ENTROPY) - graph_bytes(model, sample(1), CROSS_ENTROPY)
    # each sample saves at least its input row (6), tanh's output (16) and the log-softmax of its logits (4)
    assert per_sample >= (6 + 16 + 4) * 4
    assert gradient_batch_size(model, sample, 40, CROSS_ENTROPY, 5.5 * per_sample) == 5
    assert gradient_batch_size(model, sample, 40, CROSS_ENTROPY, 0) == 1  # nothing fits: one sample at a time
    assert gradient_batch_size(model, sample, 40, CROSS_ENTROPY, 1e12) == 40
    assert gradient_batch_size(model, sample, 10_000, CROSS_ENTROPY, 1e12) == MAX_BATCH
    assert gradient_batch_size(model, sample, 1, CROSS_ENTROPY, 0) == 1

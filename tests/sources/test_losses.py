"""engine.sources.losses: the summed cross-entropy against float64, accuracy as argmax, reduced precision refused on a
CPU; standard errors against float64 over the items, the loss and accuracy bit for bit as before them, and the
coverage of +-2 standard errors over random subsamples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stderr_fixtures import OLD_METRICS, OldCrossEntropy
from torch import nn

from engine.core.errors import UserError
from engine.sources.losses import CROSS_ENTROPY, METRICS, evaluate, summed_cross_entropy


@pytest.mark.parametrize("n", [40, 300, 1000])
def test_summed_cross_entropy_and_accuracy_match_float64(n):
    g = torch.Generator().manual_seed(n)
    logits = torch.randn(n, 10, generator=g) * 4
    logits[3, 2] = logits[3, 7] = logits[3].max() + 1  # a tie: the first maximum counts, as argmax
    y = torch.randint(0, 10, (n,), generator=g)
    want = F.cross_entropy(logits.double(), y, reduction="sum").item()
    assert summed_cross_entropy(logits, y).item() == pytest.approx(want, rel=1e-6)
    columns = logits.t().contiguous()
    assert summed_cross_entropy(columns.t(), y).item() == pytest.approx(want, rel=1e-6)  # a [C, N] view
    torch.testing.assert_close(columns, logits.t())  # and the view's storage is left alone
    out = evaluate(nn.Identity(), [(logits, y)])
    assert out["accuracy"] == (logits.argmax(1) == y).double().mean().item()


def test_reduced_precision_is_refused_on_a_cpu():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    for precision in ("bf16", "fp16"):
        with pytest.raises(UserError, match=rf"eval\.precision={precision} is for CUDA devices"):
            evaluate(nn.Identity(), [(logits, y)], precision=precision)
    assert evaluate(nn.Identity(), [(logits, y)], precision="fp32")["loss"] == pytest.approx(
        F.cross_entropy(logits.double(), y).item(), rel=1e-6)


@pytest.mark.parametrize("n", [40, 300, 1000])
def test_standard_errors_match_float64_over_the_items(n):
    """loss_stderr and accuracy_stderr (both cross-entropy kernels, one point and K = 3 stacked) equal the sample
    standard deviation of the float64 per-item values over sqrt(n)."""
    g = torch.Generator().manual_seed(n)
    logits, y = torch.randn(n, 10, generator=g) * 4, torch.randint(0, 10, (n,), generator=g)
    per = F.cross_entropy(logits.double(), y, reduction="none").numpy()
    hits = (logits.argmax(1) == y).double().numpy()
    halves = [(logits[: n // 3], y[: n // 3]), (logits[n // 3:], y[n // 3:])]
    got = evaluate(nn.Identity(), [(logits, y)]) | {"split": evaluate(nn.Identity(), halves)["loss_stderr"]}
    want = {"loss_stderr": per.std(ddof=1) / np.sqrt(n), "accuracy_stderr": hits.std(ddof=1) / np.sqrt(n)}
    for metric, value in want.items():
        assert got[metric] == pytest.approx(value, rel=1e-6), metric
    assert got["split"] == pytest.approx(want["loss_stderr"], rel=1e-6)  # sums of squares add across batches
    stacked = torch.stack([logits, logits * 0.5, logits + 1])
    sums = CROSS_ENTROPY.stacked_sums(stacked, (stacked, y), 3)
    means = CROSS_ENTROPY.means({k: v.numpy() for k, v in sums.items()})
    for k, z in enumerate(stacked):
        one = evaluate(nn.Identity(), [(z, y)])
        for metric in METRICS:
            assert means[metric][k] == pytest.approx(one[metric], rel=1e-6), (metric, k)


@pytest.mark.parametrize("n", [40, 300, 1000])
def test_loss_and_accuracy_are_bitwise_the_kernels_before_standard_errors(n):
    """Storing standard errors changes no loss or accuracy: the sums, the means over uneven batches and the K-point
    sums equal the kernels before them (tests/stderr_fixtures.py) bit for bit, [C, N] views included."""
    g = torch.Generator().manual_seed(n + 1)
    logits, y = torch.randn(n, 10, generator=g) * 4, torch.randint(0, 10, (n,), generator=g)
    old = OldCrossEntropy()
    for z in (logits, logits.t().contiguous().t()):
        new_sums, old_sums = CROSS_ENTROPY.sums(z, (z, y)), old.sums(z, (z, y))
        for key in old_sums:
            assert torch.equal(new_sums[key], old_sums[key]), key
    batches = [(logits[: n // 3], y[: n // 3]), (logits[n // 3:], y[n // 3:])]
    new, before = evaluate(nn.Identity(), batches), evaluate(nn.Identity(), batches, loss=old)
    assert set(before) == set(OLD_METRICS) and all(new[m] == before[m] for m in OLD_METRICS)
    stacked = torch.stack([logits, logits * 0.5, logits + 1])
    new_k, old_k = CROSS_ENTROPY.stacked_sums(stacked, (stacked, y), 3), old.stacked_sums(stacked, (stacked, y), 3)
    for key in old_k:
        assert torch.equal(new_k[key], old_k[key]), key


def test_two_standard_errors_cover_the_full_set_loss_about_95_percent_of_the_time():
    """Over 200 seeded random subsamples of 100 items of a 20000-item eval set (a small classifier whose per-item
    losses are skewed), the full set's mean loss and accuracy lie within 2 standard errors of the subsample's mean
    (evaluate's) in 90-99% of them (normal theory: 95.4%)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    x = torch.randn(20_000, 10, generator=g)
    with torch.no_grad():
        y = torch.multinomial(F.softmax(3 * teacher(x), 1), 1, generator=g).squeeze(1)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 5)).eval()
    with torch.no_grad():
        for p, q in zip(model.parameters(), teacher.parameters()):
            p.copy_(3 * q + 0.5 * torch.randn(q.shape, generator=g))
    full = evaluate(model, [(x, y)])
    covered = {"loss": 0, "accuracy": 0}
    trials = 200
    for seed in range(trials):
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:100]
        sub = evaluate(model, [(x[pick[:50]], y[pick[:50]]), (x[pick[50:]], y[pick[50:]])])
        for metric in covered:
            covered[metric] += abs(sub[metric] - full[metric]) <= 2 * sub[f"{metric}_stderr"]
    rates = {m: c / trials for m, c in covered.items()}
    print(f"coverage of the full-set mean by +-2 standard errors over {trials} subsamples of 100: {rates}")
    assert all(0.90 <= r <= 0.99 for r in rates.values()), rates

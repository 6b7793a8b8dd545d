"""engine.sources.losses: the summed cross-entropy against float64, accuracy as argmax, reduced precision refused on a
CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import UserError
from engine.sources.losses import evaluate, summed_cross_entropy


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

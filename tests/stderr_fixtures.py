"""The cross-entropy loss as it was before standard errors were stored (commit 94f46e6): its kernels copied verbatim,
so tests can check that the loss and accuracy a grid point stores are still these bit for bit, and that a store it
makes (no `<metric>_stderr` arrays) is one made before them. Imported as `from stderr_fixtures import ...`."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.sources.losses import CrossEntropy, Sums, output_tensor
from engine.sources.structure import Batch

OLD_METRICS = ("loss", "accuracy")
_TRANSPOSED_FROM = 256


def old_summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """engine.sources.losses.summed_cross_entropy before standard errors, verbatim."""
    logits = logits.float()
    if logits.dim() != 2 or len(y) < _TRANSPOSED_FROM:
        return F.cross_entropy(logits, y, reduction="none").sum(dtype=torch.float64)
    columns = logits.t().contiguous()
    top = columns.amax(0)
    margin = top - columns.gather(0, y.unsqueeze(0)).squeeze(0)
    return (columns - top).exp_().sum(0).log_().add_(margin).sum(dtype=torch.float64)


class OldCrossEntropy(CrossEntropy):
    """CrossEntropy's sums, stacked_sums and metrics before standard errors, verbatim (no sums of squares)."""

    metrics = OLD_METRICS

    def sums(self, out: Any, batch: Batch) -> Sums:
        logits, y = output_tensor(out), self.target(batch)
        return {"loss": old_summed_cross_entropy(logits, y), "accuracy": (logits.max(1).indices == y).sum(),
                "count": torch.tensor(len(y))}

    def stacked_sums(self, out: Any, batch: Batch, k: int) -> Sums:
        logits, y = output_tensor(out), self.target(batch)
        per = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(k), reduction="none")
        return {"loss": per.view(k, -1).sum(1, dtype=torch.float64), "accuracy": (logits.argmax(-1) == y).sum(1),
                "count": torch.full((k,), len(y))}

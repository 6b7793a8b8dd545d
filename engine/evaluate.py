"""Evaluation of one grid point: mean cross-entropy loss and accuracy over batches cached on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

METRICS = ("loss", "accuracy")

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def evaluate(model: nn.Module, batches: Batches) -> dict[str, float]:
    """Mean loss and accuracy (a fraction in [0, 1]) of model over all batches; one host sync at the end."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches[0][0].device)
    correct = torch.zeros((), dtype=torch.int64, device=loss_sum.device)
    count = 0
    with torch.inference_mode():
        for x, y in batches:
            logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
    return {"loss": loss_sum.item() / count, "accuracy": correct.item() / count}

"""Losses and metrics: mean cross-entropy loss and accuracy of a model over the eval batches, no host sync per
batch (sums stay on the device and are read once per point), optional autocast on CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import UserError

METRICS = ("loss", "accuracy")

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_TRANSPOSED_FROM = 256  # batch size from which summed_cross_entropy reduces over a transposed copy


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; fp32 is a no-op; reduced precision on a CPU is refused (it is off by default)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise UserError(f"eval.precision={precision} is for CUDA devices; use eval.precision=fp32 on {device}")
    return torch.autocast("cuda", dtype=_DTYPES[precision])


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the cross-entropy of [N, C] float32 logits, summed in float64.

    Each item's loss is log sum exp(z - max z) + (max z - z_y): two non-negative terms, so nothing cancels
    however small the loss (subtracting two batch sums of size ~N log C loses digits on a trained model). For
    large N it reduces over a [C, N] copy: reductions over a short inner class dimension are slow on CPUs
    (about 3x at N = 1797, C = 10).
    """
    logits = logits.float()
    if logits.dim() != 2 or len(y) < _TRANSPOSED_FROM:
        return F.cross_entropy(logits, y, reduction="none").sum(dtype=torch.float64)
    columns = logits.t().contiguous()  # no copy when the logits are a [C, N] product's view
    top = columns.amax(0)
    margin = top - columns.gather(0, y.unsqueeze(0)).squeeze(0)  # exactly 0 where y is the top class
    return (columns - top).exp_().sum(0).log_().add_(margin).sum(dtype=torch.float64)


def autograd_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy that gradients and Hessian-vector products differentiate: one fused float32 kernel
    (the float64 item sum of summed_cross_entropy is for reported values, where digits of a small loss matter)."""
    return F.cross_entropy(logits, y, reduction="sum")


def evaluate(model: nn.Module, batches: Batches, precision: str = "fp32") -> dict[str, float]:
    """Mean loss and accuracy (a fraction in [0, 1]) of model over all batches; one host sync at the end."""
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    count = 0
    with torch.inference_mode():
        for x, y in batches:
            with autocast(x.device, precision):
                logits = model(x)
            batch_loss = summed_cross_entropy(logits, y)
            batch_correct = (logits.max(1).indices == y).sum()  # the first maximum, as argmax; faster on CPUs
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            correct = batch_correct if correct is None else correct + batch_correct
            count += len(y)
    if loss_sum is None or correct is None:
        raise UserError("the eval split is empty; check eval.samples and data")
    return {"loss": loss_sum.item() / count, "accuracy": correct.item() / count}

"""How a sharpness ascent reads and moves the parameters: whole tensors in one process (WholeView), or each rank's
rows of an FSDP2-sharded model (engine.sweep.sharded_sharpness), so epsilon- and adaptive sharpness run unchanged
on both. Random starts are drawn in whole shapes from one seeded stream, so every view meets the same draws."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.core.errors import UserError
from engine.core.onednn import safe_autograd
from engine.curvature.batched import BatchedLoss

Draw = Callable[[tuple[int, ...]], torch.Tensor]  # a seeded float64 draw of a whole shape
LossFn = Callable[[], torch.Tensor]


class WholeView:
    """Every parameter whole on this process: the tensors moved are the parameters, sums are local."""

    def tensors(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors the ascent writes in place (aliases of the parameters' storage)."""
        return [p.detach() for p in params]

    def draw(self, index: int, local: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Parameter `index`'s part of a seeded draw of its whole shape, in its dtype."""
        return draw(tuple(local.shape)).to(local)

    def total(self, parts: list[torch.Tensor]) -> float:
        """The sum over every parameter of per-tensor float64 sums (a squared norm, say)."""
        return float(sum(float(p) for p in parts))

    def value(self, loss: torch.Tensor) -> float:
        """The loss's value (a scalar)."""
        if loss.numel() != 1:
            raise UserError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}; reduce it with "
                            ".mean()")
        return float(loss.detach())

    def grads(self, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """d loss / d params, as the tensors() parts (None where a parameter does not reach the loss)."""
        with safe_autograd(params):
            return list(torch.autograd.grad(loss, params, allow_unused=True))

    def value_and_grads(self, loss_fn: LossFn, params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor | None]]:
        """The loss and its gradient at the params. A BatchedLoss runs a backward per batch (one graph alive), each
        adding into the params' .grad in place (set aside and put back, so a caller's gradients are kept)."""
        if not isinstance(loss_fn, BatchedLoss):
            with torch.enable_grad():
                loss = loss_fn()
                return self.value(loss), self.grads(loss, params)
        kept = [p.grad for p in params]
        total: torch.Tensor | int = 0
        try:
            for p in params:
                p.grad = None
            with torch.enable_grad():
                for part, summed in loss_fn.parts():
                    total = total + summed
                    with safe_autograd(params):  # the backward only: the forward keeps oneDNN's fast kernels
                        torch.autograd.backward(part, inputs=params)
                    del part
            grads = [None if p.grad is None else p.grad.detach() for p in params]
        finally:
            for p, g in zip(params, kept):
                p.grad = g
        return self.value(loss_fn.mean(total)), grads

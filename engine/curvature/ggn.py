"""The generalized Gauss-Newton matrix G = J^T H_L J of the mean eval loss (J: the Jacobian of the model's output
w.r.t. the parameters, H_L: the Hessian of the loss w.r.t. that output), applied matrix-free: a positive
semi-definite stand-in for the Hessian (its curvature where the loss is convex in the output, the model's own
second derivatives left out).

Each product, batch by batch: J v by the double-vjp trick (the vjp u -> J^T u is linear in u, so differentiating
<J^T u, v> w.r.t. u gives J v), then H_L (J v) in closed form for the built-in losses (cross_entropy, causal_lm:
diag(p) - p p^T per predicted item; mse: 2/d I), then J^T of that by one more vjp. A custom loss computes its value
inside its own function, with no model output to take H_L at: it is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from engine.core.errors import UserError
from engine.core.onednn import safe_autograd
from engine.curvature.hessian import AllReduce, checked_params, mean_product
from engine.sources.loss_kinds import IGNORE, CausalLM, MeanSquaredError
from engine.sources.losses import CROSS_ENTROPY, Batches, CrossEntropy, Loss, output_tensor, wide
from engine.sources.structure import Batch

GGN_LOSSES = ("cross_entropy", "mse", "causal_lm")  # the losses whose output Hessian is known here


@dataclass
class _Linearized:
    """One batch at the current weights: the output z (with its graph), the dummy cotangent u and J^T u (with its
    graph, linear in u), the product with the loss's output Hessian, and the batch's item count."""

    out: torch.Tensor
    dummy: torch.Tensor
    vjp: tuple[torch.Tensor, ...]
    output_hessian: Callable[[torch.Tensor], torch.Tensor]
    count: torch.Tensor | int


def check_ggn_loss(loss: Loss) -> None:
    """Refuse, in one line, a loss whose Hessian w.r.t. the model's output is not known here."""
    if not isinstance(loss, CrossEntropy | MeanSquaredError | CausalLM):
        raise UserError(f"hessian.matrix=ggn needs a loss of the model's output ({', '.join(GGN_LOSSES)}); loss="
                        f"{loss.name} computes its value inside its own function: use hessian.matrix=hessian")


def _softmax_hessian(logits: torch.Tensor, dim: int, mask: torch.Tensor | None) -> Callable[[torch.Tensor],
                                                                                           torch.Tensor]:
    """u -> (diag(p) - p p^T) u along `dim` at p = softmax(logits): the cross-entropy's Hessian w.r.t. the logits,
    zero where mask is False (items not predicted)."""
    p = torch.softmax(logits.detach(), dim=dim)

    def apply(u: torch.Tensor) -> torch.Tensor:
        pu = p * u
        out = pu - p * pu.sum(dim, keepdim=True)
        return out if mask is None else out * mask.unsqueeze(dim).to(out.dtype)

    return apply


def output_curvature(loss: Loss, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Callable[[torch.Tensor],
                                                                                                 torch.Tensor],
                                                                           torch.Tensor | int]:
    """(the model's output on the batch, with its graph; u -> H_L u; the item count) for a built-in loss: the same
    output, targets and count its summed loss (`loss.autograd`) uses."""
    check_ggn_loss(loss)
    if isinstance(loss, CausalLM):
        logits = wide(output_tensor(loss.forward(model, batch)))
        labels = loss.labels(cast(Mapping[str, Any], batch))[:, 1:]
        predicted = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        predicted[:, :-1] = labels != IGNORE  # token t's logits predict token t+1; the last predicts nothing
        return logits, _softmax_hessian(logits, -1, predicted), (labels != IGNORE).sum()
    if isinstance(loss, MeanSquaredError):
        pred = output_tensor(loss.forward(model, batch))
        scale = 2.0 / max(1, pred[0].numel()) if len(pred) else 0.0  # each item's mean over its d outputs
        return pred, lambda u: u * scale, len(pred)
    logits = wide(output_tensor(loss.forward(model, batch)))
    target = cast(CrossEntropy, loss).target(batch)
    mask = None if target.is_floating_point() else target != IGNORE  # class probabilities: every item counts
    return logits, _softmax_hessian(logits, 1, mask), len(target)


class GGNOperator:
    """The generalized Gauss-Newton matrix of the mean eval loss w.r.t. `params`, batch by batch, as a
    LinearOperator: the same batches, item counts, all-reduce over ranks and graph keeping as HessianOperator."""

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        batches: Batches,
        loss: Loss = CROSS_ENTROPY,
        all_reduce: AllReduce | None = None,
        keep_graph: bool = False,
    ) -> None:
        check_ggn_loss(loss)
        params = checked_params(params, "GGNOperator")
        self.model, self.params, self.batches, self.loss, self.all_reduce = model, params, batches, loss, all_reduce
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.calls = 0
        self.keep_graph = keep_graph  # keep each batch's linearization between products (rebuilt on a change)
        self._kept: list[_Linearized] = []
        self._key: tuple | None = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """G @ v for a flat v of `size` entries, in eval mode (BatchNorm uses its running statistics)."""
        if v.dim() != 1 or v.numel() != self.size:
            raise UserError(f"matvec needs a flat vector of {self.size} entries, got shape {tuple(v.shape)}")
        v = v.to(self.device, self.dtype)
        pieces = [u.view_as(p) for u, p in zip(v.split(self.numels), self.params)]
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        count: torch.Tensor | int = 0
        with torch.enable_grad(), safe_autograd(self.params):
            for lin in self._linearized():
                used = [(g, u) for g, u in zip(lin.vjp, pieces) if g.requires_grad]
                if used:
                    jv = torch.autograd.grad([g for g, _ in used], lin.dummy, [u for _, u in used],
                                             retain_graph=True)[0]
                    back = torch.autograd.grad(lin.out, self.params, lin.output_hessian(jv),
                                               retain_graph=self.keep_graph, materialize_grads=True)
                    total += torch.cat([b.reshape(-1) for b in back])
                count += lin.count
        product = mean_product(total, count, self.all_reduce)
        self.calls += 1
        return product

    def _linearized(self) -> Iterator[_Linearized]:
        """Each batch's output and J^T u graph, in eval mode; kept with keep_graph until a parameter's version
        counter moves (an in-place perturbation makes a new point)."""
        key = tuple((id(p), p._version) for p in self.params)
        if self.keep_graph and key == self._key:
            yield from self._kept
            return
        self._kept, self._key = [], None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), safe_autograd(self.params):
                for batch in self.batches:
                    out, output_hessian, count = output_curvature(self.loss, self.model, batch)
                    dummy = torch.zeros_like(out, requires_grad=True)
                    vjp = torch.autograd.grad(out, self.params, dummy, create_graph=True, materialize_grads=True)
                    lin = _Linearized(out, dummy, vjp, output_hessian, count)
                    if self.keep_graph:
                        self._kept.append(lin)
                    yield lin
        finally:
            self.model.train(was_training)
        if self.keep_graph:
            self._key = key


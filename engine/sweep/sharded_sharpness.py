"""The sharpness ascents on an FSDP2-sharded model: each rank moves its rows of every parameter (the DTensors' local
tensors), takes the random start's rows from a draw of the whole shape (the same stream as one process), sums norms
and the loss over its shard group, and gets its rows of the gradient from a backward through FSDP2 (its
reduce-scatter). Hessian-vector products do not go through FSDP2; first-order gradients do."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from engine.core.errors import UserError
from engine.curvature.batched import BatchedLoss
from engine.curvature.param_view import Draw, LossFn, WholeView
from engine.sources.losses import Loss
from engine.sources.splits import Split
from engine.sources.structure import to_device
from engine.sweep.sharded import ShardGroup


class ShardedView(WholeView):
    """The params of a model sharded over `group`: loss_fn returns this rank's part of the mean loss (its batches'
    sum over the group's item count), the view adds the parts."""

    def __init__(self, group: ShardGroup) -> None:
        self.group = group
        self.cut: list[bool] = []
        self.shapes: list[tuple[int, ...]] = []

    def tensors(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        self.cut = [isinstance(p, DTensor) for p in params]
        self.shapes = [tuple(p.shape) for p in params]
        return [p.to_local().detach() if isinstance(p, DTensor) else p.detach() for p in params]

    def draw(self, index: int, local: torch.Tensor, draw: Draw) -> torch.Tensor:
        whole = draw(self.shapes[index])
        if self.cut[index] and whole.ndim:
            whole = whole[slice(*self.group.row_range(whole.shape[0]))]
        return whole.to(local)

    def total(self, parts: list[torch.Tensor]) -> float:
        counted = [p.double() for p, c in zip(parts, self.cut) if c or self.group.leader]  # a whole tensor once
        local = torch.stack(counted).sum() if counted else torch.zeros((), dtype=torch.float64)
        dist.all_reduce(local, group=self.group.group)
        return float(local)

    def value(self, loss: torch.Tensor) -> float:
        part = super().value(loss)
        summed = torch.tensor(part, dtype=torch.float64)
        dist.all_reduce(summed, group=self.group.group)
        return float(summed)

    def grads(self, loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """This rank's rows of the gradient (FSDP2 averages the group's parts: a positive factor, which neither a
        sign step nor a normalized step sees)."""
        for p in params:
            p.grad = None
        loss.backward()
        return self.taken(params)

    def value_and_grads(self, loss_fn: LossFn, params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor | None]]:
        """A BatchedLoss: a backward per batch (one graph alive), FSDP2 adding each reduce-scattered part into the
        rows' .grad; the value is the group's sum of this rank's batches."""
        if not isinstance(loss_fn, BatchedLoss):
            return super().value_and_grads(loss_fn, params)
        for p in params:
            p.grad = None
        total: torch.Tensor | int = 0
        with torch.enable_grad():
            for part, summed in loss_fn.parts():
                total = total + summed
                part.backward()
                del part
        return self.value(loss_fn.mean(total)), self.taken(params)

    @staticmethod
    def taken(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The rows of the params' .grad, which are cleared."""
        out: list[torch.Tensor | None] = []
        for p in params:
            g = p.grad
            out.append(None if g is None else (g.to_local() if isinstance(g, DTensor) else g).detach())
            p.grad = None
        return out


def group_mean_loss(model: nn.Module, samples: Split, group: ShardGroup, loss: Loss,
                    batch_size: int = 256) -> BatchedLoss:
    """loss_fn of a sharded ascent: the samples cut into S x rounds near-equal contiguous batches, batch j run by the
    group's rank j mod S (every rank runs as many forwards and backwards: FSDP2's all-gathers and reduce-scatters are
    collective); each call returns this rank's summed loss over the group's item count, so the parts add up to the
    mean loss of one process."""
    count = len(samples)
    if count < group.size:
        raise UserError(f"summary.sharpness_samples={count} is fewer than parallel.shard={group.size}: every shard "
                        "runs a batch; raise summary.sharpness_samples")
    batches = -(-count // batch_size)
    rounds = -(-batches // group.size)
    pieces = group.size * rounds
    bounds = [count * j // pieces for j in range(pieces + 1)]
    mine = [to_device(samples.batch(bounds[j], bounds[j + 1]), group.device)
            for j in range(group.rank, pieces, group.size)]

    def items(counts: list[torch.Tensor | int]) -> torch.Tensor:  # the group's item count (tokens, samples)
        total = torch.tensor(float(sum(float(c) for c in counts)), dtype=torch.float64)
        dist.all_reduce(total, group=group.group)
        return total.to(torch.float32)

    return BatchedLoss(model, mine, loss, items)

"""The mean loss of the sharpness ascents, taken one batch at a time: its value is the sum of the batches' summed
losses over the item count (as one call of a plain loss_fn), and its gradient is accumulated batch by batch, so only
one batch's autograd graph is alive. The batch size is chosen from the graph's bytes per sample, measured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn

from engine.sources.losses import Loss
from engine.sources.structure import Batch

Items = Callable[[list[torch.Tensor | int]], torch.Tensor | int]  # the batches' item counts -> the divisor
MAX_BATCH = 256  # what the ascents always used: small models keep their batches (and their numbers, bit for bit)


class BatchedLoss:
    """sum_b loss_b / items over `batches`: called, it returns that value with the whole graph (a plain loss_fn);
    `parts()` yields each batch's share with its own graph, for a gradient accumulated one batch at a time. `items`
    turns the batches' counts into the divisor (default: their sum; a shard group sums over its ranks)."""

    def __init__(self, model: nn.Module, batches: list[Batch], loss: Loss, items: Items | None = None) -> None:
        self.model, self.batches, self.loss = model, batches, loss
        self.items_of: Items = items or (lambda counts: sum(counts))
        self.items: torch.Tensor | int | None = None  # the divisor, counted once: the same at every point

    def __call__(self) -> torch.Tensor:
        parts = [self.loss.autograd(self.model, batch) for batch in self.batches]
        if self.items is None:
            self.items = self.items_of([p[1] for p in parts])
        return self.mean(sum(p[0] for p in parts))

    def mean(self, total: torch.Tensor | int) -> torch.Tensor:
        """The summed losses of every batch (added from 0, in batch order) over the item count."""
        return cast(torch.Tensor, total / self.items)  # type: ignore[operator]

    def parts(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(this batch's summed loss over the items, with its graph; the summed loss alone, detached), batch by
        batch: adding the second ones from 0 and dividing by `items` gives the value of a call, bit for bit."""
        if self.items is None:
            with torch.no_grad():
                self()
        for batch in self.batches:
            total, _ = self.loss.autograd(self.model, batch)
            yield total / self.items, total.detach()  # type: ignore[operator]


def graph_bytes(model: nn.Module, batch: Batch, loss: Loss) -> int:
    """Bytes of the tensors one forward on batch saves for its backward (each tensor once; a view counts its own
    elements, not its base's)."""
    seen: dict[tuple[str, int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            seen[(str(t.device), t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss.autograd(model, batch)
    return sum(seen.values())


def gradient_batch_size(model: nn.Module, sample: Callable[[int], Batch], count: int, loss: Loss,
                        room_bytes: float) -> int:
    """The ascents' batch size: as many samples as one graph fits in room_bytes, from the bytes a graph of 2 samples
    holds beyond one of 1 (the weights it saves cancel out), at most MAX_BATCH and count; 1 when nothing fits."""
    if count < 2:
        return 1
    per_sample = max(graph_bytes(model, sample(2), loss) - graph_bytes(model, sample(1), loss), 1)
    return int(max(1, min(MAX_BATCH, count, room_bytes // per_sample)))

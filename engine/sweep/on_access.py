"""Weights computed on access (eval.perturb=on_access): each perturbed tensor is made at the point when a module
reads it, and freed once that module is done with it.

The in-place Perturber keeps a copy of theta* beside the live weights, the size of the model. Here the live tensors
are theta* and are never written: each perturbed tensor becomes a torch parametrization whose value is theta* +
sum_k c_k d_k, computed in float32 from theta* and rounded once to the tensor's dtype, the Perturber's arithmetic to
the bit, so a store is the same either way. A sweep then holds the model, the directions and one layer's perturbed
weight at a time; the price is making each weight again for every batch (memory-bound, small beside a forward).
Whoever reads the tensor, wherever (a tied output head, a parent module reading a child's weight), gets the point's
value. Parametrizations are put on at the first move away from theta* and taken off by restore.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from engine.sweep.perturb import PointValues


class PointOf(nn.Module):
    """The parametrization of perturbed tensor i: its value at the perturber's current coordinates."""

    def __init__(self, owner: OnAccessPerturber, index: int) -> None:
        super().__init__()
        self.owner, self.index = owner, index

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return self.owner.value(self.index, theta)


class OnAccessPerturber(PointValues):
    """The Perturber's interface (set, restore, active) with no copy of theta*: the model's tensors stay theta* and
    its modules read each tensor's value at the point, made on access. No after_set hook (BatchNorm recalibration
    writes statistics into the model, which would then be theta* no more)."""

    def __init__(self, model: nn.Module, tensors: list[torch.Tensor], directions: list[list[torch.Tensor]],
                 end: list[torch.Tensor] | None = None, logged: list[bool] | None = None) -> None:
        super().__init__(tensors, directions, end, logged)
        self.tensors = tensors
        self.coords: tuple[float, ...] = ()
        self.sites = holders(model, tensors)
        self.on = False

    def value(self, i: int, theta: torch.Tensor) -> torch.Tensor:
        """Tensor i at the current coordinates: theta itself at c = 0, the end's own tensor at the end point, else
        the point's value computed in float32 and rounded once to theta's dtype."""
        if not any(self.coords):
            return theta
        if self.end_values is not None and self.at_end(self.coords):
            return self.end_values[i]
        return self.point_value(i, self.coords).to(theta.dtype)

    def set(self, coords: Sequence[float]) -> None:
        """Make every later read of a perturbed tensor give its value at coords."""
        self.coords = tuple(float(c) for c in coords)
        if any(self.coords) and not self.on:
            for module, name, i in self.sites:
                parametrize.register_parametrization(module, name, PointOf(self, i), unsafe=True)
            self.on = True

    def restore(self) -> None:
        """Back to theta*: the parametrizations come off and the modules hold their own tensors again."""
        self.coords = ()
        if self.on:
            for module, name, _ in self.sites:
                parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            self.on = False

    @contextmanager
    def active(self) -> Iterator[OnAccessPerturber]:
        """Use inside `with`: theta* is read again however the block ends."""
        try:
            yield self
        finally:
            self.restore()


def holders(model: nn.Module, tensors: list[torch.Tensor]) -> list[tuple[nn.Module, str, int]]:
    """(module, attribute, index) of every place the model registers one of the tensors: a tied tensor (GPT-2's
    embedding and output head) has one per module that holds it, and each gets the parametrization."""
    index = {id(t): i for i, t in enumerate(tensors)}
    sites = [(module, name, index[id(t)]) for module in model.modules()
             for registry in (module._parameters, module._buffers) for name, t in registry.items()
             if t is not None and id(t) in index]
    missing = set(range(len(tensors))) - {i for _, _, i in sites}
    if missing:
        raise ValueError(f"eval.perturb=on_access: {len(missing)} perturbed tensor(s) are not registered on any "
                         "module of the model")
    return sites

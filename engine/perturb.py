"""In-place perturbation: theta = theta* + sum_k c_k d_k set on the live tensors by torch._foreach_* updates.

No model copy and no load_state_dict per point; theta* is kept once and restored bitwise at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


class Perturber:
    """Moves a model's perturbed tensors to theta* + sum_k c_k d_k, vectorized over all tensors."""

    def __init__(self, tensors: list[torch.Tensor], directions: list[list[torch.Tensor]]) -> None:
        self.tensors = tensors
        self.theta = [t.detach().clone() for t in tensors]
        self.directions = directions

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        """Set the live tensors to theta* + sum_k coords[k] * directions[k]."""
        torch._foreach_copy_(self.tensors, self.theta)
        for c, d in zip(coords, self.directions):
            if c != 0.0:
                torch._foreach_add_(self.tensors, d, alpha=float(c))

    @torch.no_grad()
    def restore(self) -> None:
        """Put theta* back, bit for bit."""
        torch._foreach_copy_(self.tensors, self.theta)

    @contextmanager
    def active(self) -> Iterator[Perturber]:
        """Use inside `with`: theta* is restored however the block ends."""
        try:
            yield self
        finally:
            self.restore()

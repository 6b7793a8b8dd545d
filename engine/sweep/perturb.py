"""In-place perturbation: theta = theta* + sum_k c_k d_k set on the live tensors by torch._foreach_* updates.

No model copy and no load_state_dict per point; theta* is kept once and restored bitwise at the end. For an
interpolation the point is lerp(A, B, c) instead, which is exactly A at 0 and exactly B at 1; a curve's last direction
is B - A, and at coefficients (0, ..., 0, 1) its point is B's own tensors, bit for bit. Tensors marked as
log-space (BatchNorm running variances) move as exp(log theta* + sum_k c_k d_k), so they stay positive.

A tensor held in bfloat16 or float16 (model.dtype) is computed in float32 from theta* at every point, one tensor at a
time, and rounded once into the live tensor: nothing is accumulated in low precision, so no drift builds up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from engine.directions.vectors import to_coordinates

LOW_PRECISION = (torch.bfloat16, torch.float16)


class PointValues:
    """theta* (as coordinates), the directions and an interpolation's end: each perturbed tensor's value at a point."""

    def __init__(self, theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
                 end: list[torch.Tensor] | None, logged: list[bool] | None) -> None:
        self.logged = logged or [False] * len(theta)
        self.theta = to_coordinates(theta, self.logged)
        self.directions = directions
        self.end_values = end
        self.end = to_coordinates(end, self.logged) if end is not None else None

    def at_end(self, coords: Sequence[float]) -> bool:
        """Whether coords are the end point's (0, ..., 0, 1), where the end's own tensors are set bit for bit."""
        return self.end_values is not None and coords[-1] == 1.0 and not any(coords[:-1])

    def point_value(self, i: int, coords: Sequence[float]) -> torch.Tensor:
        """Tensor i at coords, computed in float32 (or its own wider dtype) from theta*; the caller rounds it."""
        wide = torch.promote_types(self.theta[i].dtype, torch.float32)
        value = self.theta[i].to(wide, copy=True)
        if self.end is not None and len(self.directions) == 1:
            value.lerp_(self.end[i].to(wide), float(coords[0]))
        else:
            for c, d in zip(coords, self.directions):
                if c != 0.0:
                    value.add_(d[i], alpha=float(c))
        return value.exp_() if self.logged[i] else value


class Perturber(PointValues):
    """Moves a model's perturbed tensors to theta* + sum_k c_k d_k, vectorized over all tensors.

    `end`: the tensors at coefficients (0, ..., 0, 1), set bit for bit there (model B of an interpolation or a
    curve, whose last direction is end - theta*); with one direction, set lerps from theta* (c = 0) to end (c = 1).
    `after_set` runs after every move (BatchNorm recalibration); `also_restore` are further tensors it changes,
    restored with theta*. `logged` marks the tensors that move in log space; `theta` (and the directions) hold their
    logs. At c = 0 the live tensors are theta* bit for bit, and at c = 1 of an interpolation they are end bit for bit.
    """

    def __init__(self, tensors: list[torch.Tensor], directions: list[list[torch.Tensor]],
                 end: list[torch.Tensor] | None = None, after_set: Callable[[], None] | None = None,
                 also_restore: list[torch.Tensor] | None = None, logged: list[bool] | None = None) -> None:
        self.tensors = tensors
        self.saved = [t.detach().clone() for t in tensors]
        super().__init__(self.saved, directions, end, logged)
        self.in_log_space = [t for t, m in zip(tensors, self.logged) if m]
        self.after_set = after_set
        self.extra = also_restore or []
        self.extra_saved = [t.detach().clone() for t in self.extra]
        self.low = any(t.dtype in LOW_PRECISION for t in tensors)  # then each tensor is computed in float32

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        """Set the live tensors to theta* + sum_k coords[k] * directions[k] (or lerp(theta*, end, coords[0]))."""
        if not any(coords):
            torch._foreach_copy_(self.tensors, self.saved)
        elif self.end_values is not None and self.at_end(coords):
            torch._foreach_copy_(self.tensors, self.end_values)
        elif not self.low:
            torch._foreach_copy_(self.tensors, self.theta)
            if self.end is not None and len(self.directions) == 1:
                torch._foreach_lerp_(self.tensors, self.end, float(coords[0]))
            else:
                for c, d in zip(coords, self.directions):
                    if c != 0.0:
                        torch._foreach_add_(self.tensors, d, alpha=float(c))
            if self.in_log_space:
                torch._foreach_exp_(self.in_log_space)
        else:
            for i in range(len(self.tensors)):
                self.tensors[i].copy_(self.point_value(i, coords))
        if self.after_set is not None:
            self.after_set()

    @torch.no_grad()
    def restore(self) -> None:
        """Put theta* (and the extra tensors) back, bit for bit."""
        torch._foreach_copy_(self.tensors, self.saved)
        if self.extra:
            torch._foreach_copy_(self.extra, self.extra_saved)

    @contextmanager
    def active(self) -> Iterator[Perturber]:
        """Use inside `with`: theta* is restored however the block ends."""
        try:
            yield self
        finally:
            self.restore()

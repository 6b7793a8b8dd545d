"""Sharpness of a minimum: Keskar et al.'s epsilon-sharpness by projected gradient ascent in a box around the params,
and the same idea read off an already-swept 1D/2D filter-normalized loss surface."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from engine.core.errors import UserError
from engine.core.progress import progress_bar
from engine.curvature.param_view import WholeView

_RADIUS_RTOL = 1e-9  # grid coordinates like 0.5000000001 from linspace still count as within radius 0.5


def _check_epsilon_args(params: list[torch.Tensor], epsilon: float, steps: int) -> None:
    if not (isinstance(epsilon, numbers.Real) and math.isfinite(epsilon) and epsilon > 0):
        raise UserError(f"epsilon must be a finite number > 0, got {epsilon!r}; pass e.g. epsilon=1e-3")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise UserError(f"steps must be an integer >= 1, got {steps!r}; pass e.g. steps=20")
    if not params:
        raise UserError("params is empty; pass the model's parameters, e.g. list(model.parameters())")
    for i, p in enumerate(params):
        if not (p.is_leaf and p.requires_grad and p.is_floating_point()):
            raise UserError(f"params[{i}] must be a floating-point leaf tensor with requires_grad=True; "
                            "pass list(model.parameters())")


def epsilon_sharpness(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], epsilon: float,
                      steps: int = 20, seed: int = 0, random_start: bool = True,
                      progress: bool = False, view: WholeView | None = None) -> dict[str, float]:
    """Keskar et al. (2017) metric 2.1 (A = I), 100 * (max - L) / (1 + L) over |delta_i| <= epsilon * (|theta_i| + 1),
    by sign-gradient PGD from a seeded random (or zero) start; loss_fn() reads the params, restored bitwise after.
    With progress, a bar over the ascent steps (callers pass it on rank 0 only); `view` (default: whole tensors)
    says how the params are held, e.g. as the rows of a sharded model. Beside the params it holds theta*, the deltas
    and one step's gradient: the boxes and step sizes are made one tensor at a time."""
    _check_epsilon_args(params, epsilon, steps)
    view = view or WholeView()
    tensors = view.tensors(params)
    saved = [t.clone() for t in tensors]

    def box(s: torch.Tensor) -> torch.Tensor:  # made per tensor when used, not held: the same bits every time
        return epsilon * (s.abs() + 1)

    try:
        with torch.no_grad():
            center = view.value(loss_fn())
        if random_start:
            gen = torch.Generator().manual_seed(seed)
            deltas = [(view.draw(i, s, lambda shape: torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1)
                       * box(s)) for i, s in enumerate(saved)]
        else:
            deltas = [torch.zeros_like(s) for s in saved]
        best = center  # delta = 0 lies in the box, so sharpness >= 0; a zero start at a stationary point never moves

        def move_to(ds: list[torch.Tensor]) -> None:
            with torch.no_grad():
                for t, s, d in zip(tensors, saved, ds):
                    t.copy_(s + d)

        with progress_bar(steps, "epsilon-sharpness", "step", progress) as bar:
            for _ in range(steps):
                move_to(deltas)
                value, grads = view.value_and_grads(loss_fn, params)
                if value > best:
                    best = value
                with torch.no_grad():  # a sign step of 2.5 box / steps, clipped to the box, one tensor at a time
                    for i, s in enumerate(saved):
                        g, grads[i] = grads[i], None
                        if g is not None:
                            b = box(s)
                            deltas[i] = torch.clamp(deltas[i] + 2.5 * b / steps * g.sign(), min=-b, max=b)
                bar.update(1)
        move_to(deltas)
        with torch.no_grad():
            value = view.value(loss_fn())
        if value > best:
            best = value
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
    return {"epsilon": float(epsilon), "loss": center, "max_loss": best,
            "sharpness": 100.0 * (best - center) / (1.0 + center), "steps": int(steps)}


def surface_sharpness(loss: np.ndarray, coords: tuple[np.ndarray, ...], radius: float) -> float | None:
    """(Max finite loss with all |coords| <= radius - center) / (1 + center) on a 1D/2D surface, plain ratio (not x100);
    center = grid point nearest the origin; None if the center is not finite or no finite point lies within radius."""
    if not (isinstance(radius, numbers.Real) and math.isfinite(radius) and radius > 0):
        raise UserError(f"radius must be a finite number > 0, got {radius!r}; pass e.g. radius=0.5")
    loss = np.asarray(loss, dtype=np.float64)
    axes = [np.asarray(c, dtype=np.float64).reshape(-1) for c in coords]
    if loss.ndim not in (1, 2) or len(axes) != loss.ndim:
        raise UserError(f"coords must hold one axis per loss dimension (1 or 2), got {len(axes)} axes for a loss of "
                        f"shape {loss.shape}; pass coords=(x,) or (x, y)")
    if tuple(len(a) for a in axes) != loss.shape:
        raise UserError(f"coords lengths {tuple(len(a) for a in axes)} do not match loss shape {loss.shape}; "
                        "pass the axes the surface was swept on")
    center_value = loss[tuple(int(np.argmin(np.abs(a))) for a in axes)]
    if not np.isfinite(center_value):
        return None
    inside = [np.abs(a) <= radius * (1 + _RADIUS_RTOL) for a in axes]
    window = loss[np.ix_(*inside)]
    window = window[np.isfinite(window)]
    if window.size == 0:
        return None
    return float((window.max() - center_value) / (1.0 + center_value))


def valley_asymmetry(loss: np.ndarray, coords: tuple[np.ndarray, ...]) -> dict[str, Any] | None:
    """He et al. (2019)'s valley asymmetry along each swept direction, about the centre (theta*): at every distance r
    the grid has on both sides, the rises L(+r) - L(0) and L(-r) - L(0); the index is their normalized difference
    (sum rise+ - sum rise-) / (sum rise+ + sum rise-) in [-1, 1]: 0 symmetric, > 0 steeper on the positive side.
    None when the centre is not finite; an axis with no finite pair is left out."""
    loss = np.asarray(loss, dtype=np.float64)
    axes = [np.asarray(c, dtype=np.float64).reshape(-1) for c in coords]
    center = tuple(int(np.argmin(np.abs(a))) for a in axes)
    if loss.ndim != len(axes) or not np.isfinite(loss[center]):
        return None
    out: dict[str, Any] = {}
    for k, (axis, name) in enumerate(zip(axes, ("x", "y"))):
        line = loss[tuple(slice(None) if j == k else center[j] for j in range(loss.ndim))]
        c = center[k]
        pairs = [(line[c + i] - line[c], line[c - i] - line[c]) for i in range(1, min(c, len(line) - 1 - c) + 1)
                 if np.isfinite(line[c + i]) and np.isfinite(line[c - i])]
        if not pairs:
            continue
        plus, minus = (float(sum(p[j] for p in pairs)) for j in (0, 1))
        total = abs(plus) + abs(minus)
        out[name] = {"index": (plus - minus) / total if total > 0 else 0.0, "rise_plus": plus / len(pairs),
                     "rise_minus": minus / len(pairs), "radius": float(axis[c + len(pairs)] - axis[c]),
                     "pairs": len(pairs)}
    return out or None

"""Adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023): the loss rise under perturbations scaled
elementwise by |theta|, delta = |theta| * u, so rescaling a ReLU network's layers by alpha and 1/alpha (the same
function, Dinh et al. 2017) leaves it unchanged, unlike the raw Hessian or epsilon-sharpness.

worst case: max over ||u||_p <= radius of L(theta + |theta| u) - L(theta), by projected gradient ascent in u;
average: E over u ~ N(0, average_radius^2 I) of L(theta + |theta| u) - L(theta), by seeded Monte Carlo, with its
standard error. Entries of theta that are exactly 0 do not move (T_theta = |theta|, no offset: exact invariance).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.core.errors import UserError
from engine.core.progress import progress_bar
from engine.curvature.param_view import WholeView

NORMS = ("2", "inf")


def adaptive_sharpness(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor], radius: float,
                       norm: str = "inf", steps: int = 20, average_radius: float | None = None, samples: int = 32,
                       seed: int = 0, progress: bool = False,
                       view: WholeView | None = None) -> dict[str, float | int | str | None]:
    """Worst-case and average adaptive sharpness at the params (restored bitwise after); loss_fn() reads them.

    Worst case: `steps` of ascent from a seeded random start in the ball ||u||_p <= radius (p = 2: normalized gradient
    steps of the radius's length projected back on the ball, a power iteration near a minimum; p = inf: sign steps
    of 2.5 radius / steps clipped to the box), keeping the largest loss seen.
    Average: `samples` Gaussian draws of u with standard deviation average_radius (None: no average). `view`
    (default: whole tensors) says how the params are held, e.g. as the rows of a sharded model. Beside the params it
    holds theta*, u and one step's gradient: |theta*| and the gradient in u are made one tensor at a time."""
    if norm not in NORMS:
        raise UserError(f"summary.adaptive_norm={norm!r} must be one of {', '.join(NORMS)}")
    if not (math.isfinite(radius) and radius > 0) or steps < 1:
        raise UserError(f"adaptive sharpness needs radius > 0 and steps >= 1 (got {radius}, {steps})")
    view = view or WholeView()
    tensors = view.tensors(params)
    saved = [t.clone() for t in tensors]  # theta*; its scale |theta*| is made one tensor at a time, not held
    gen = torch.Generator().manual_seed(seed)

    def move_one(i: int, u: torch.Tensor) -> None:
        tensors[i].copy_(saved[i] + saved[i].abs() * u)

    def move_to(us: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for i, u in enumerate(us):
                move_one(i, u)

    def draw_one(i: int) -> torch.Tensor:
        return view.draw(i, saved[i], lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64))

    def norm2(us: list[torch.Tensor]) -> float:
        return math.sqrt(view.total([(u.double() ** 2).sum() for u in us]))

    def project(us: list[torch.Tensor]) -> None:
        """Onto the ball, in place of the list's tensors (one at a time)."""
        size = norm2(us) if norm == "2" else 0.0
        for i, u in enumerate(us):
            us[i] = u.clamp(-radius, radius) if norm == "inf" else u if size <= radius else u * (radius / size)

    def gradient_in_u(i: int, g: torch.Tensor | None) -> torch.Tensor:  # |theta| * dL/dtheta
        return torch.zeros_like(saved[i]) if g is None else saved[i].abs() * g

    total = steps + (samples if average_radius else 0)
    try:
        with torch.no_grad():
            center = view.value(loss_fn())
        us = [draw_one(i) for i in range(len(saved))]
        size = norm2(us) or 1.0
        for i, u in enumerate(us):
            us[i] = u * (0.5 * radius / size) if norm == "2" else u.sign() * 0.5 * radius
        project(us)
        best = center
        step = 2.5 * radius / steps if norm == "inf" else radius  # l2: a radius-long step, then back onto the ball
        with progress_bar(total, "adaptive sharpness", "pass", progress) as bar:
            for _ in range(steps):
                move_to(us)
                value, grads = view.value_and_grads(loss_fn, params)
                best = max(best, value)
                with torch.no_grad():  # one tensor at a time: the gradient in u is made again where it is used
                    if norm == "inf":
                        for i in range(len(us)):
                            us[i] = us[i] + step * gradient_in_u(i, grads[i]).sign()
                            grads[i] = None
                    else:
                        gnorm = math.sqrt(view.total([(gradient_in_u(i, g).double() ** 2).sum()
                                                      for i, g in enumerate(grads)])) or 1.0
                        for i in range(len(us)):
                            us[i] = us[i] + (step / gnorm) * gradient_in_u(i, grads[i])
                            grads[i] = None
                    project(us)
                bar.update(1)
            move_to(us)
            with torch.no_grad():
                best = max(best, view.value(loss_fn()))
            rises: list[float] = []
            if average_radius:
                for _ in range(samples):
                    with torch.no_grad():  # each tensor drawn, scaled and moved before the next is drawn
                        for i in range(len(saved)):
                            move_one(i, draw_one(i) * average_radius)
                        rises.append(view.value(loss_fn()) - center)
                    bar.update(1)
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)
    mean = sum(rises) / len(rises) if rises else None
    stderr = (math.sqrt(sum((r - mean) ** 2 for r in rises) / (len(rises) - 1) / len(rises))
              if mean is not None and len(rises) > 1 else None)
    return {"radius": float(radius), "norm": norm, "steps": int(steps), "loss": center, "worst": best - center,
            "average_radius": None if not average_radius else float(average_radius), "average": mean,
            "average_stderr": stderr, "samples": len(rises)}

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
    (default: whole tensors) says how the params are held, e.g. as the rows of a sharded model."""
    if norm not in NORMS:
        raise UserError(f"summary.adaptive_norm={norm!r} must be one of {', '.join(NORMS)}")
    if not (math.isfinite(radius) and radius > 0) or steps < 1:
        raise UserError(f"adaptive sharpness needs radius > 0 and steps >= 1 (got {radius}, {steps})")
    view = view or WholeView()
    tensors = view.tensors(params)
    saved = [t.clone() for t in tensors]
    scales = [s.abs() for s in saved]
    gen = torch.Generator().manual_seed(seed)

    def move_to(us: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s, t, u in zip(tensors, saved, scales, us):
                p.copy_(s + t * u)

    def draw() -> list[torch.Tensor]:
        return [view.draw(i, s, lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64))
                for i, s in enumerate(saved)]

    def norm2(us: list[torch.Tensor]) -> float:
        return math.sqrt(view.total([(u.double() ** 2).sum() for u in us]))

    def project(us: list[torch.Tensor]) -> list[torch.Tensor]:
        if norm == "inf":
            return [u.clamp(-radius, radius) for u in us]
        size = norm2(us)
        return us if size <= radius else [u * (radius / size) for u in us]

    total = steps + (samples if average_radius else 0)
    try:
        with torch.no_grad():
            center = view.value(loss_fn())
        start = draw()
        size = norm2(start) or 1.0
        us = project([u * (0.5 * radius / size) for u in start] if norm == "2" else
                     [u.sign() * 0.5 * radius for u in start])
        best = center
        step = 2.5 * radius / steps if norm == "inf" else radius  # l2: a radius-long step, then back onto the ball
        with progress_bar(total, "adaptive sharpness", "pass", progress) as bar:
            for _ in range(steps):
                move_to(us)
                with torch.enable_grad():
                    loss = loss_fn()
                    value = view.value(loss)
                    grads = view.grads(loss, params)
                best = max(best, value)
                with torch.no_grad():  # the gradient in u: |theta| * dL/dtheta
                    gu = [torch.zeros_like(u) if g is None else t * g for g, t, u in zip(grads, scales, us)]
                    if norm == "inf":
                        us = project([u + step * g.sign() for u, g in zip(us, gu)])
                    else:
                        gnorm = norm2(gu) or 1.0
                        us = project([u + (step / gnorm) * g for u, g in zip(us, gu)])
                bar.update(1)
            move_to(us)
            with torch.no_grad():
                best = max(best, view.value(loss_fn()))
            rises: list[float] = []
            if average_radius:
                for _ in range(samples):
                    move_to([u * average_radius for u in draw()])
                    with torch.no_grad():
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

"""Sharpness: PGD epsilon-sharpness against closed forms on quadratics and a linear loss, on a tiny model, and the
surface read-off on hand-made grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.core.errors import UserError
from engine.curvature.sharpness import epsilon_sharpness, surface_sharpness

THETA0 = torch.tensor([0.0, 1.5, -2.0, 0.25, -0.75], dtype=torch.float64)


def _quadratic(theta: torch.Tensor, h: torch.Tensor, c: float):
    """0.5 * sum h_i (theta - theta0)_i^2 + c, read at theta's current value."""
    return lambda: 0.5 * (h * (theta - THETA0) ** 2).sum() + c


def _theta() -> torch.Tensor:
    return THETA0.clone().requires_grad_(True)


def test_quadratic_max_is_the_box_corner() -> None:
    """Positive curvature: every coordinate climbs to the box edge, so the max is the corner, known in closed form."""
    theta, eps, c = _theta(), 1e-2, 0.3
    h = torch.tensor([1.0, 4.0, 0.5, 10.0, 2.0], dtype=torch.float64)
    before = theta.detach().clone()
    out = epsilon_sharpness(_quadratic(theta, h, c), [theta], eps, steps=20, seed=3)
    box = eps * (THETA0.abs() + 1)
    expected_max = 0.5 * float((h * box**2).sum()) + c
    assert out["loss"] == pytest.approx(c, rel=1e-12)
    assert out["max_loss"] == pytest.approx(expected_max, rel=1e-9)
    assert out["sharpness"] == pytest.approx(100 * (expected_max - c) / (1 + c), rel=1e-9)
    assert out["epsilon"] == eps and out["steps"] == 20
    assert torch.equal(theta.detach(), before)


def test_saddle_bounded_by_positive_part() -> None:
    """Negative curvature: PGD oscillates within one step of 0 there, so sharpness is at most the positive-part corner
    value and at least that minus what the oscillation can cost."""
    theta, eps, c, steps = _theta(), 1e-2, 0.1, 20
    h = torch.tensor([3.0, -2.0, 1.0, -5.0, 0.5], dtype=torch.float64)
    before = theta.detach().clone()
    out = epsilon_sharpness(_quadratic(theta, h, c), [theta], eps, steps=steps, seed=1)
    box = eps * (THETA0.abs() + 1)
    pos, neg = h.clamp(min=0), (-h).clamp(min=0)
    upper = 100 * 0.5 * float((pos * box**2).sum()) / (1 + c)
    slack = 100 * 0.5 * float((neg * (2.5 * box / steps) ** 2).sum()) / (1 + c)
    assert upper - slack - 1e-12 <= out["sharpness"] <= upper * (1 + 1e-9)
    assert torch.equal(theta.detach(), before)


def test_linear_loss_from_zero_start_reaches_signed_corner() -> None:
    """A linear loss g . theta has its box max at delta = box * sign(g); the zero start gets there too."""
    theta, eps = _theta(), 1e-3
    g = torch.tensor([1.0, -2.0, 0.5, -0.25, 3.0], dtype=torch.float64)
    out = epsilon_sharpness(lambda: (g * theta).sum() + 2.0, [theta], eps, steps=5, random_start=False)
    center = float((g * THETA0).sum()) + 2.0
    expected_max = center + float((g.abs() * eps * (THETA0.abs() + 1)).sum())
    assert out["max_loss"] == pytest.approx(expected_max, rel=1e-12)
    assert out["sharpness"] == pytest.approx(100 * (expected_max - center) / (1 + center), rel=1e-9)


def test_pgd_trajectory_step_and_projection() -> None:
    """Zero start on a linear loss: iterates move 2.5 * box / steps along sign(g) per step, clipped at the box, and the
    final iterate is evaluated too (with steps=1 it is the only one off the center)."""
    eps, steps = 1e-2, 4
    g = torch.tensor([1.0, -2.0, 0.5, -0.25, 3.0], dtype=torch.float64)
    theta = _theta()
    seen: list[torch.Tensor] = []

    def loss_fn() -> torch.Tensor:
        seen.append(theta.detach().clone())
        return (g * theta).sum()

    epsilon_sharpness(loss_fn, [theta], eps, steps=steps, random_start=False)
    box = eps * (THETA0.abs() + 1)
    assert len(seen) == steps + 2  # center, steps gradient iterates, final iterate
    for k, at in enumerate(seen[1:]):
        expected = THETA0 + min(2.5 * k / steps, 1.0) * box * g.sign()
        torch.testing.assert_close(at, expected, rtol=0, atol=1e-15)
    out = epsilon_sharpness(lambda: (g * theta).sum(), [theta], eps, steps=1, random_start=False)
    assert out["max_loss"] == pytest.approx(float((g * THETA0).sum() + (g.abs() * box).sum()), rel=1e-12)


def test_concave_center_is_the_max() -> None:
    """At a strict local max every iterate is lower, so the center (delta = 0, inside the box) gives sharpness 0."""
    theta = _theta()
    h = -torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    out = epsilon_sharpness(_quadratic(theta, h, 0.7), [theta], 1e-2, steps=7, seed=2)
    assert out["max_loss"] == out["loss"] == pytest.approx(0.7, rel=1e-12)
    assert out["sharpness"] == 0.0


def _tiny_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(6, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(32, 6, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    return model, x, y


def test_tiny_model_sharpness_grows_with_epsilon_and_restores_params() -> None:
    model, x, y = _tiny_model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    base = float(F.cross_entropy(model(x), y).detach())
    values = []
    for eps in (1e-4, 1e-3, 1e-2):
        out = epsilon_sharpness(lambda: F.cross_entropy(model(x), y), params, eps, steps=10, seed=7)
        assert out["loss"] == pytest.approx(base, rel=1e-6)
        assert out["sharpness"] > 0
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
        assert all(p.grad is None for p in params)
        values.append(out["sharpness"])
    assert values[0] < values[1] < values[2]


def test_params_restored_when_loss_fn_raises() -> None:
    model, x, y = _tiny_model()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    calls = 0

    def flaky() -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("boom")
        return F.cross_entropy(model(x), y)

    with pytest.raises(RuntimeError, match="boom"):
        epsilon_sharpness(flaky, params, 1e-2, steps=10)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_same_seed_same_result() -> None:
    model, x, y = _tiny_model()
    params = list(model.parameters())
    runs = [epsilon_sharpness(lambda: F.cross_entropy(model(x), y), params, 1e-2, steps=5, seed=s) for s in (5, 5)]
    assert runs[0] == runs[1]


def test_surface_sharpness_2d_by_hand() -> None:
    x, y = np.linspace(-1, 1, 5), np.linspace(-1, 1, 9)
    loss = x[:, None] ** 2 + 2 * y[None, :] + 0.5
    # within 0.5: x in {-0.5, 0, 0.5}, y in {-0.5, ..., 0.5}: max 0.25 + 1 + 0.5 = 1.75; center 0.5
    assert surface_sharpness(loss, (x, y), 0.5) == pytest.approx((1.75 - 0.5) / 1.5)
    # within 0.3: x in {0}, y in {-0.25, 0, 0.25}: max 0 + 0.5 + 0.5 = 1.0
    assert surface_sharpness(loss, (x, y), 0.3) == pytest.approx((1.0 - 0.5) / 1.5)
    loss[1, 6], loss[3, 6] = np.inf, np.nan  # both maxima (x=+-0.5, y=0.5) are dropped; next best x=0, y=0.5: 1.5
    assert surface_sharpness(loss, (x, y), 0.5) == pytest.approx((1.5 - 0.5) / 1.5)


def test_surface_sharpness_1d_by_hand() -> None:
    x = np.linspace(-2, 2, 9)
    loss = np.abs(x) + 2 * x + 1
    # within 1: x in {-1, -0.5, 0, 0.5, 1} -> {0, 0.5, 1, 2.5, 4}; center 1
    assert surface_sharpness(loss, (x,), 1.0) == pytest.approx((4 - 1) / 2)
    assert surface_sharpness(loss, (x,), 0.1) == 0.0


def test_surface_sharpness_none_cases() -> None:
    x = np.linspace(-1, 1, 5)
    loss = x**2
    loss[2] = np.nan
    assert surface_sharpness(loss, (x,), 0.5) is None
    off = np.linspace(0.5, 1.0, 3)
    assert surface_sharpness(off**2, (off,), 0.2) is None


@pytest.mark.parametrize("eps", [0.0, -1e-3, math.nan, math.inf])
def test_bad_epsilon(eps: float) -> None:
    theta = _theta()
    with pytest.raises(UserError, match="epsilon"):
        epsilon_sharpness(lambda: theta.sum(), [theta], eps)


@pytest.mark.parametrize("steps", [0, -3])
def test_bad_steps(steps: int) -> None:
    theta = _theta()
    with pytest.raises(UserError, match="steps"):
        epsilon_sharpness(lambda: theta.sum(), [theta], 1e-3, steps=steps)


def test_bad_params_and_loss_shape() -> None:
    with pytest.raises(UserError, match="params"):
        epsilon_sharpness(lambda: torch.zeros(()), [], 1e-3)
    frozen = THETA0.clone()
    with pytest.raises(UserError, match="params"):
        epsilon_sharpness(lambda: frozen.sum(), [frozen], 1e-3)
    theta = _theta()
    with pytest.raises(UserError, match="scalar"):
        epsilon_sharpness(lambda: theta * 2, [theta], 1e-3)
    assert torch.equal(theta.detach(), THETA0)


@pytest.mark.parametrize("radius", [0.0, -0.5, math.nan])
def test_bad_radius(radius: float) -> None:
    x = np.linspace(-1, 1, 5)
    with pytest.raises(UserError, match="radius"):
        surface_sharpness(x**2, (x,), radius)


def test_bad_coords() -> None:
    x = np.linspace(-1, 1, 5)
    with pytest.raises(UserError, match="coords"):
        surface_sharpness(np.zeros((5, 5)), (x,), 0.5)
    with pytest.raises(UserError, match="coords"):
        surface_sharpness(np.zeros((5, 4)), (x, x), 0.5)


def test_progress_bar_over_the_ascent_steps_changes_no_number(capfd: pytest.CaptureFixture[str]) -> None:
    model, x, y = _tiny_model()
    params = list(model.parameters())
    silent = epsilon_sharpness(lambda: F.cross_entropy(model(x), y), params, 1e-2, steps=6, seed=3)
    assert capfd.readouterr() == ("", "")
    shown = epsilon_sharpness(lambda: F.cross_entropy(model(x), y), params, 1e-2, steps=6, seed=3, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "epsilon-sharpness" in err and "6/6" in err
    assert shown == silent

"""A model held in bfloat16 or float16 (model.dtype): each point's weights are computed in float32 from theta* and
rounded once, so c = 0 is theta* bit for bit, a whole grid leaves no drift, and every point is the float32 formula
rounded; directions may be held in bfloat16 (direction.dtype)."""

from __future__ import annotations

import pytest
import torch

from engine.directions.kinds import Directions, in_dtype
from engine.directions.vectors import random_directions
from engine.sweep.perturb import Perturber


def bf16_tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g).to(torch.bfloat16), torch.randn(32, generator=g).to(torch.bfloat16)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_each_point_is_the_float32_formula_rounded_once_and_no_drift(dtype: torch.dtype) -> None:
    live = [t.to(dtype) for t in bf16_tensors()]
    theta = [t.clone() for t in live]
    dirs = random_directions([t.float() for t in theta], 2, 0, "filter", "none")
    assert all(d.dtype == torch.float32 for dk in dirs for d in dk)
    grid = [(a, b) for a in torch.linspace(-1, 1, 7).tolist() for b in torch.linspace(-1, 1, 7).tolist()]
    with Perturber(live, dirs).active() as p:
        for a, b in grid:
            p.set((a, b))
            for t, th, d0, d1 in zip(live, theta, dirs[0], dirs[1]):
                want = th.float()  # the formula in float32, as add_ with alpha computes it, then one rounding
                if a != 0.0:
                    want.add_(d0, alpha=a)
                if b != 0.0:
                    want.add_(d1, alpha=b)
                assert torch.equal(t, want.to(dtype)), (a, b)
        p.set((0.0, 0.0))
        assert all(torch.equal(t, th) for t, th in zip(live, theta))
        p.set((0.5, -0.5))
    assert all(torch.equal(t, th) for t, th in zip(live, theta))  # restored bit for bit


def test_accumulated_low_precision_updates_would_drift() -> None:
    """What the per-point recomputation avoids: adding and subtracting c * d in bfloat16 does not return to theta*."""
    live = bf16_tensors()[0]
    theta = live.clone()
    d = torch.randn(live.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    for c in torch.linspace(-1, 1, 21).tolist():
        live.add_(d, alpha=c)
        live.sub_(d, alpha=c)
    assert not torch.equal(live, theta)


def test_bfloat16_directions_halve_and_match_their_rounding() -> None:
    live = [torch.randn(128, 64), torch.randn(64)]
    dirs = random_directions([t.clone() for t in live], 2, 0, "filter", "none")
    made = in_dtype(Directions([list(dk) for dk in dirs]), torch.bfloat16)
    assert all(d.dtype == torch.bfloat16 for dk in made.directions for d in dk)
    assert sum(d.element_size() * d.numel() for d in made.directions[0]) * 2 == sum(
        d.element_size() * d.numel() for d in dirs[0])
    theta = [t.clone() for t in live]
    with Perturber(live, made.directions).active() as p:
        p.set((0.3, -0.7))
        for t, th, d0, d1 in zip(live, theta, made.directions[0], made.directions[1]):
            torch.testing.assert_close(t, th + 0.3 * d0.float() - 0.7 * d1.float(), rtol=0, atol=1e-6)

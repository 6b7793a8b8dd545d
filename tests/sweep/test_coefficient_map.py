"""Directions.coefficients, the map from grid coordinates to coefficients over the directions: a runner with a map
evaluates exactly the points its coefficients name (in place and K stacked), and a map of the wrong shape is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.directions.kinds import coefficients_at
from engine.sweep.perturb import Perturber
from engine.sweep.vectorized import PointRunner, make_evaluator


def quadratic(coords: np.ndarray) -> np.ndarray:
    """A 1D grid over three directions: (t, t^2, 1 - t)."""
    t = coords[:, 0]
    return np.stack([t, t**2, 1 - t], 1)


@pytest.mark.parametrize("k", [1, 3])
def test_runner_with_a_map_equals_the_mapped_coefficients(k):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).eval()
    tensors = [p.detach().clone() for p in model.parameters()]
    dirs = [[torch.randn_like(t) for t in tensors] for _ in range(3)]
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,)))]
    names = [n for n, _ in model.named_parameters()]
    t = np.linspace(-0.5, 1.5, 5)[:, None]

    def runner(coefficients):
        ev = make_evaluator(model, names, tensors, dirs, batches) if k > 1 else None
        return PointRunner(model, Perturber(list(model.parameters()), dirs), batches, evaluator=ev, k=k,
                           coefficients=coefficients)

    mapped = runner(quadratic)
    with mapped.perturber.active():
        got = mapped.run(t)
    plain = runner(None)
    with plain.perturber.active():
        want = plain.run(quadratic(t))
    for metric in want:
        np.testing.assert_array_equal(got[metric], want[metric])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tensors))


def test_identity_without_a_map_and_a_wrong_shape_refused():
    coords = np.zeros((4, 2))
    assert coefficients_at(None, coords, 2) is coords
    with pytest.raises(ValueError, match=r"shape \(4, 3\) for 4 points over 2 directions"):
        coefficients_at(lambda c: np.zeros((len(c), 3)), coords, 2)

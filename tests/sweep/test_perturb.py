"""engine.sweep.perturb.Perturber alone, on small models: theta* + sum c_k d_k against float64, theta* restored bit for
bit, log-space tensors (running variances) kept positive, an interpolation landing on B bit for bit."""

from __future__ import annotations

import torch

from engine.directions.vectors import log_space, perturbed_tensors, random_directions, to_coordinates
from engine.sources.models import CifarResNet
from engine.sweep.perturb import Perturber
from helpers import trained_model


def test_theta_star_restored_bitwise(trained_run):
    cfg, _, result = trained_run
    model, _ = trained_model(cfg, result)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [t for _, t in perturbed_tensors(model, "states")]
    dirs = random_directions([t.detach() for t in tensors], 2, 0, "filter", "none")
    with Perturber(tensors, dirs).active() as p:
        p.set((0.37, -0.81))
        assert not torch.equal(tensors[0], before[next(iter(before))])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_interpolation_lands_on_both_models_bitwise():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g) * 1e3, torch.randn(1000, generator=g) * 1e-3
    assert not torch.equal(a + 1.0 * (b - a), b)  # the additive form does not land on B
    live = a.clone()
    perturber = Perturber([live], [[b - a]], end=[b])
    with perturber.active():
        perturber.set((1.0,))
        assert torch.equal(live, b)
        perturber.set((0.0,))
        assert torch.equal(live, a)
        perturber.set((-0.5,))
        torch.testing.assert_close(live, a - 0.5 * (b - a))
    assert torch.equal(live, a)


def test_states_directions_keep_variances_positive_and_theta_star_exact():
    """A ResNet's 'states' (BatchNorm statistics too) moved along normalized directions: the running variances are
    var* exp(c . d) and positive at every point, and (0, 0) is theta* bit for bit."""
    torch.manual_seed(0)
    net = CifarResNet(8, 10, 3, 4, shortcut=True)
    named = perturbed_tensors(net, "states")
    names, theta = [n for n, _ in named], [t.detach().clone() for _, t in named]
    logged = log_space(net, names)
    dirs = random_directions(to_coordinates(theta, logged), 2, 0, "filter", "none", logged)
    tensors = [t for _, t in perturbed_tensors(net, "states")]
    perturber = Perturber(tensors, dirs, logged=logged)
    with perturber.active():
        for point in ((-1.0, -1.0), (1.0, -1.0), (-3.0, 2.5)):
            perturber.set(point)
            for t, d0, d1, th, m in zip(tensors, dirs[0], dirs[1], theta, logged):
                if m:
                    assert (t > 0).all()
                    torch.testing.assert_close(t, th * torch.exp(point[0] * d0 + point[1] * d1))
        perturber.set((0.0, 0.0))
        assert all(torch.equal(t, th) for t, th in zip(tensors, theta))

"""engine.sweep.perturb.Perturber alone, on small models: theta* + sum c_k d_k against float64, theta* restored bit for
bit, log-space tensors (running variances) kept positive, an interpolation landing on B bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.directions.vectors import log_space, perturbed, perturbed_tensors, random_directions, to_coordinates
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


def small_model(width: int = 16, var_scale: float = 3.0) -> nn.Module:
    """Linear, BatchNorm1d (running statistics away from their defaults), ReLU, Linear."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))
    g = torch.Generator().manual_seed(1)
    model[1].running_mean.copy_(torch.randn(width, generator=g))
    model[1].running_var.copy_(torch.rand(width, generator=g) * var_scale + 0.2)
    return model


def raw_directions(tensors: list[torch.Tensor], count: int = 2, seed: int = 2) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(t.shape, generator=g) for t in tensors] for _ in range(count)]


def test_set_is_theta_plus_the_directions_to_float32_rounding():
    """Against float64 theta* + c1 d1 + c2 d2: off by no more than a few float32 roundings of the terms."""
    target = perturbed(small_model(), "weights")
    dirs = raw_directions(target.tensors)
    theta = [t.detach().double().clone() for t in target.tensors]
    perturber = Perturber(target.tensors, dirs)
    eps = torch.finfo(torch.float32).eps
    with perturber.active():
        for c in ((0.3, -0.7), (1.0, 0.0), (0.0, -2.5), (1e-3, 5.0), (-1.0, 1.0)):
            perturber.set(c)
            for t, th, d0, d1 in zip(target.tensors, theta, *dirs):
                want = th + c[0] * d0.double() + c[1] * d1.double()
                scale = th.abs() + abs(c[0]) * d0.double().abs() + abs(c[1]) * d1.double().abs()
                assert t.dtype == torch.float32
                assert ((t.detach().double() - want).abs() <= 4 * eps * scale).all(), c


def test_zero_and_leaving_active_restore_theta_star_bitwise():
    """(0, 0) is theta* bit for bit, log-space variances included (exp(log v) is not v); leaving `active()`, even by
    an exception, restores theta* and the extra tensors; after_set runs after every move."""
    model = small_model(var_scale=30.0)
    target = perturbed(model, "states")
    saved = [t.detach().clone() for t in target.tensors]
    var = model[1].running_var
    assert not torch.equal(torch.exp(torch.log(var)), var)  # so only an exact restore passes below
    extra = torch.arange(4.0)
    calls: list[tuple[float, ...]] = []

    def after_set() -> None:
        calls.append(tuple(float(t.sum()) for t in target.tensors[:1]))
        extra.add_(1.0)

    perturber = Perturber(target.tensors, raw_directions(target.theta), after_set=after_set, also_restore=[extra],
                          logged=target.logged)
    with pytest.raises(RuntimeError, match="stop"), perturber.active():
        perturber.set((0.5, -0.25))
        assert not any(torch.equal(t, s) for t, s in zip(target.tensors, saved))
        perturber.set((0.0, 0.0))
        assert all(torch.equal(t, s) for t, s in zip(target.tensors, saved))
        perturber.set((1.0, 2.0))
        raise RuntimeError("stop")
    assert all(torch.equal(t, s) for t, s in zip(target.tensors, saved))
    assert torch.equal(extra, torch.arange(4.0)) and len(calls) == 3


def test_log_space_tensors_move_as_var_times_exp_and_stay_positive():
    model = small_model()
    target = perturbed(model, "states")
    names = target.names
    i_var, i_mean = names.index("1.running_var"), names.index("1.running_mean")
    assert [n for n, m in zip(names, target.logged) if m] == ["1.running_var"]
    var0, mean0 = model[1].running_var.clone(), model[1].running_mean.clone()
    dirs = raw_directions(target.tensors)
    dirs[0][i_var] = torch.linspace(-3.0, 3.0, len(var0))  # added linearly, c = 1 would make variances negative
    assert ((var0 + dirs[0][i_var]) < 0).any()
    perturber = Perturber(target.tensors, dirs, logged=target.logged)
    with perturber.active():
        for c in ((1.0, 0.0), (-0.5, 2.0), (3.0, -3.0)):
            perturber.set(c)
            var, mean = target.tensors[i_var], target.tensors[i_mean]
            assert (var > 0).all()
            torch.testing.assert_close(var, var0 * torch.exp(c[0] * dirs[0][i_var] + c[1] * dirs[1][i_var]),
                                       rtol=1e-5, atol=0)
            torch.testing.assert_close(mean, mean0 + c[0] * dirs[0][i_mean] + c[1] * dirs[1][i_mean])  # linear


def test_interpolation_in_log_space_lands_on_b_bitwise():
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(64, generator=g) * 5 + 0.1, torch.rand(64, generator=g) * 1e-2 + 1e-4
    live = a.clone()
    perturber = Perturber([live], [[b.log() - a.log()]], end=[b], logged=[True])
    with perturber.active():
        perturber.set((1.0,))
        assert torch.equal(live, b)
        perturber.set((0.5,))
        torch.testing.assert_close(live, (a * b).sqrt(), rtol=1e-5, atol=0)  # the geometric midpoint
        perturber.set((0.0,))
        assert torch.equal(live, a)
    assert torch.equal(live, a)

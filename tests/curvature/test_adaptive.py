"""engine.curvature.adaptive and valley_asymmetry: adaptive sharpness against the closed forms of quadratics, the
valley asymmetry of a hand-made valley, and Dinh et al.'s counterexample reproduced: rescaling two consecutive
layers of a ReLU network by alpha and 1/alpha (the same function) leaves the filter-normalized surface and the
adaptive sharpness unchanged, while the raw top Hessian eigenvalue and epsilon-sharpness change by the factors
predicted here (from the exact float64 Hessian, and from epsilon-sharpness's first-order form)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from engine.core.errors import UserError
from engine.curvature.adaptive import adaptive_sharpness
from engine.curvature.hessian import HessianOperator, top_eigenpairs
from engine.curvature.sharpness import epsilon_sharpness, valley_asymmetry
from engine.directions.vectors import normalize, random_raw
from engine.sources.losses import CROSS_ENTROPY

ALPHA = 8.0


def quadratic(a: torch.Tensor, w0: torch.Tensor) -> tuple[torch.nn.Parameter, object]:
    """L(w) = 1/2 (w - w0)^T A (w - w0), at its minimum w = w0."""
    w = nn.Parameter(w0.clone())
    return w, lambda: 0.5 * (w - w0) @ a @ (w - w0)


def test_worst_case_l2_is_half_radius_squared_times_the_top_eigenvalue_of_tat() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, w0 = m @ m.T + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    w, loss = quadratic(a, w0)
    t = torch.diag(w0.abs())
    want = 0.5 * 0.3**2 * float(torch.linalg.eigvalsh(t @ a @ t).max())
    got = adaptive_sharpness(loss, [w], 0.3, "2", steps=200, average_radius=None)
    assert got["worst"] == pytest.approx(want, rel=1e-3)
    assert torch.equal(w.detach(), w0)  # restored


def test_worst_case_linf_of_a_diagonal_quadratic_sits_at_a_corner() -> None:
    d = torch.tensor([1.0, 4.0, 0.5, 2.0], dtype=torch.float64)
    w0 = torch.tensor([0.5, -2.0, 3.0, 1.0], dtype=torch.float64)
    w, loss = quadratic(torch.diag(d), w0)
    got = adaptive_sharpness(loss, [w], 0.1, "inf", steps=40, average_radius=None)
    assert got["worst"] == pytest.approx(0.5 * 0.1**2 * float((d * w0**2).sum()), rel=1e-9)


def test_average_is_half_sigma_squared_sum_of_a_ii_w_i_squared() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(5, 5, generator=g, dtype=torch.float64)
    a, w0 = m @ m.T, torch.randn(5, generator=g, dtype=torch.float64)
    w, loss = quadratic(a, w0)
    got = adaptive_sharpness(loss, [w], 0.1, average_radius=0.2, samples=4000, seed=3)
    want = 0.5 * 0.2**2 * float((torch.diagonal(a) * w0**2).sum())
    assert got["average_stderr"] is not None and got["average_stderr"] < 0.1 * want
    assert abs(got["average"] - want) < 4 * got["average_stderr"]


def test_bad_settings_are_refused_in_one_line() -> None:
    w, loss = quadratic(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    for kwargs in ({"norm": "1"}, {"radius": 0.0}, {"steps": 0}):
        with pytest.raises(UserError) as err:
            adaptive_sharpness(loss, [w], **{"radius": 0.1, **kwargs})
        assert "\n" not in str(err.value)


def test_valley_asymmetry_of_a_hand_made_valley() -> None:
    x = np.linspace(-1, 1, 21)
    y = np.linspace(-0.5, 0.5, 11)
    valley = np.where(x[:, None] > 0, 1.0, 4.0) * x[:, None] ** 2 + y[None, :] ** 2 + 0.3
    out = valley_asymmetry(valley, (x, y))
    assert out is not None
    assert out["x"]["index"] == pytest.approx((1 - 4) / (1 + 4))  # steeper on the negative side
    assert out["y"]["index"] == pytest.approx(0.0, abs=1e-12) and out["y"]["pairs"] == 5
    assert out["x"]["radius"] == pytest.approx(1.0)
    line = valley_asymmetry(np.where(x > 0, 2 * x, -x), (x,))
    assert line is not None and line["x"]["index"] == pytest.approx(1 / 3)
    assert valley_asymmetry(np.full(21, np.nan), (x,)) is None


# ---- Dinh et al. (2017): the same function, rescaled ----


def relu_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def rescaled(net: nn.Sequential, alpha: float) -> nn.Sequential:
    """Layer 0 (weight and bias) times alpha, layer 2's weight over alpha: ReLU is positively homogeneous, so the
    function is the same."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        out[0].weight.mul_(alpha)
        out[0].bias.mul_(alpha)
        out[2].weight.div_(alpha)
    return out


@pytest.fixture(scope="module")
def pair() -> dict[str, object]:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    net = relu_net()
    return {"net": net, "scaled": rescaled(net, ALPHA), "batch": (x, y)}


def mean_loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> object:
    def f() -> torch.Tensor:
        total, count = CROSS_ENTROPY.autograd(net, batch)
        return total / count

    return f


def test_rescaled_network_is_the_same_function(pair: dict) -> None:
    x, _ = pair["batch"]
    torch.testing.assert_close(pair["net"](x), pair["scaled"](x), rtol=1e-5, atol=1e-6)


def test_filter_normalized_surface_is_unchanged(pair: dict) -> None:
    losses = {}
    for key in ("net", "scaled"):
        net = copy.deepcopy(pair[key])
        theta = [p.detach().clone() for p in net.parameters()]
        dirs = [normalize(raw, theta, "filter", "biasbn") for raw in random_raw(theta, 2, seed=11)]
        values = []
        for a, b in [(0.0, 0.0), (0.5, -0.25), (-1.0, 1.0), (0.8, 0.8)]:
            with torch.no_grad():
                for p, t, d1, d2 in zip(net.parameters(), theta, *dirs):
                    p.copy_(t + a * d1 + b * d2)
                values.append(float(mean_loss(net, pair["batch"])()))
        losses[key] = values
    np.testing.assert_allclose(losses["scaled"], losses["net"], rtol=2e-6)


def test_adaptive_sharpness_is_unchanged(pair: dict) -> None:
    out = {}
    for key in ("net", "scaled"):
        net = pair[key]
        out[key] = adaptive_sharpness(mean_loss(net, pair["batch"]), list(net.parameters()), 0.05, "inf", steps=10,
                                      average_radius=0.05, samples=16, seed=2)
    for field in ("worst", "average"):
        assert out["scaled"][field] == pytest.approx(out["net"][field], rel=1e-4, abs=1e-7), field
    assert out["net"]["worst"] > 1e-3  # not trivially zero


def exact_hessian(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    m = copy.deepcopy(net).double()
    shapes = [p.shape for p in m.parameters()]
    names = [n for n, _ in m.named_parameters()]
    x, y = batch

    def f(v: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (t.view(s) for t, s in zip(v.split([s.numel() for s in shapes]), shapes))))
        out = torch.func.functional_call(m, params, (x.double(),))
        return nn.functional.cross_entropy(out, y)

    return torch.autograd.functional.hessian(f, torch.cat([p.detach().reshape(-1) for p in m.parameters()]))


def test_raw_top_eigenvalue_changes_by_the_predicted_factor(pair: dict) -> None:
    """H' = D^-1 H D^-1 with D = alpha on layer 0, 1/alpha on layer 2's weight: the prediction from the original's
    exact Hessian equals the engine's Lanczos on the rescaled network, and is far from the original's."""
    hessian = exact_hessian(pair["net"], pair["batch"])
    scale = torch.cat([torch.full((p.numel(),), s, dtype=torch.float64) for p, s in
                       zip(pair["net"].parameters(), (ALPHA, ALPHA, 1 / ALPHA, 1.0, 1.0, 1.0))])
    predicted = float(torch.linalg.eigvalsh(hessian / scale[:, None] / scale[None, :]).max())
    original = float(torch.linalg.eigvalsh(hessian).max())
    tops = {}
    for key in ("net", "scaled"):
        net = pair[key]
        op = HessianOperator(net, list(net.parameters()), [pair["batch"]])
        tops[key] = float(top_eigenpairs(op, 1, steps=op.size, seed=0)[0][0])
    assert tops["net"] == pytest.approx(original, rel=1e-4)
    assert tops["scaled"] == pytest.approx(predicted, rel=1e-4)
    assert tops["scaled"] / tops["net"] > 5  # alpha^2 = 64 on layer 2's block: far from invariant


def test_epsilon_sharpness_changes_by_its_first_order_prediction(pair: dict) -> None:
    """Away from a minimum, sign ascent in Keskar's box reaches the corner of the linearized loss:
    100 * eps * sum |g_i| (|theta_i| + 1) / (1 + L); rescaling moves |g| and |theta| in opposite ways, but the +1
    does not follow, so the value changes, by the ratio of the two predictions."""
    eps = 1e-5
    got, want = {}, {}
    for key in ("net", "scaled"):
        net = pair[key]
        f = mean_loss(net, pair["batch"])
        params = list(net.parameters())
        loss = f()
        grads = torch.autograd.grad(loss, params)
        want[key] = 100 * eps * float(sum((g.abs() * (p.detach().abs() + 1)).sum() for g, p in zip(grads, params))) / (
            1 + float(loss.detach()))
        got[key] = epsilon_sharpness(f, params, eps, steps=20, random_start=False)["sharpness"]
        assert got[key] == pytest.approx(want[key], rel=0.05), key
    assert got["scaled"] / got["net"] == pytest.approx(want["scaled"] / want["net"], rel=0.1)
    assert abs(got["scaled"] / got["net"] - 1) > 0.2

"""Hessian curvature: HVPs, Lanczos eigenpairs, traces and SLQ against the exact Hessian of small float64 nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from engine.core.errors import UserError
from engine.curvature.hessian import (
    HessianOperator,
    MatrixOperator,
    extreme_eigenvalues,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    slq_density,
    top_eigenpairs,
)


def _mlp_problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (40,))
    return model, [(x[:13], y[:13]), (x[13:30], y[13:30]), (x[30:], y[30:])]


def _conv_problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Softplus(), nn.Flatten(), nn.Linear(27, 3)
    ).double()
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.2, 0.7, -0.9], dtype=torch.float64))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64))
    model.eval()
    x = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    return model, [(x[:5], y[:5]), (x[5:], y[5:])]


def _exact_hessian(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The Hessian of the mean loss over all samples as a function of the flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model.eval()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces = theta.split([s.numel() for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


PROBLEMS = {"mlp": _mlp_problem, "conv_bn": _conv_problem}


@pytest.fixture(params=list(PROBLEMS), scope="module")
def problem(request):
    model, batches = PROBLEMS[request.param]()
    hessian = _exact_hessian(model, batches)
    op = HessianOperator(model, list(model.parameters()), batches)
    return model, batches, hessian, op


def test_matvec_matches_exact_hessian(problem):
    model, _, hessian, op = problem
    n = hessian.shape[0]
    assert op.size == n and op.dtype == torch.float64 and 50 <= n <= 130
    assert torch.allclose(hessian, hessian.T, atol=1e-12)
    before = op.calls
    for seed in range(3):
        v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=0, atol=1e-10)
    assert op.calls == before + 3
    assert all(p.grad is None for p in model.parameters())


def test_kept_graph_matches_and_follows_weight_changes(problem):
    model, batches, hessian, _ = problem
    op = HessianOperator(model, list(model.parameters()), batches, keep_graph=True)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for _ in range(2):  # the second product reuses the kept graphs
        torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=0, atol=1e-10)
    first = next(model.parameters())
    saved = first.detach().clone()
    with torch.no_grad():
        first.mul_(1.5)  # an in-place move, as Perturber.set makes: the graphs must be rebuilt
    try:
        moved = _exact_hessian(model, batches)
        assert (moved - hessian).abs().max() > 1e-3
        torch.testing.assert_close(op.matvec(v), moved @ v, rtol=0, atol=1e-10)
    finally:
        with torch.no_grad():
            first.copy_(saved)


def test_matvec_keeps_mode_and_running_stats():
    model, batches = _conv_problem()
    model.train()
    stats = model[1].running_mean.clone()
    op = HessianOperator(model, list(model.parameters()), batches)
    hv = op.matvec(torch.ones(op.size, dtype=torch.float64))
    assert model.training
    assert torch.equal(model[1].running_mean, stats)
    model.eval()
    torch.testing.assert_close(hv, _exact_hessian(model, batches).sum(1), rtol=0, atol=1e-10)


def test_all_reduce_is_applied_to_sum_and_count():
    model, batches = _mlp_problem()
    seen = []

    def two_identical_ranks(t: torch.Tensor) -> None:
        seen.append(t.numel())
        t.mul_(2)

    plain = HessianOperator(model, list(model.parameters()), batches)
    reduced = HessianOperator(model, list(model.parameters()), batches, all_reduce=two_identical_ranks)
    v = torch.randn(plain.size, dtype=torch.float64)
    torch.testing.assert_close(reduced.matvec(v), plain.matvec(v), rtol=0, atol=1e-14)
    assert sorted(seen) == [1, plain.size]


def test_top_eigenpairs_match_numpy(problem):
    _, _, hessian, op = problem
    exact_values, exact_vectors = np.linalg.eigh(hessian.numpy())
    values, vectors = top_eigenpairs(op, k=3, seed=0)
    top = exact_values[::-1][:3]
    assert values.shape == (3,) and vectors.shape == (3, op.size)
    np.testing.assert_allclose(values.numpy(), top, rtol=1e-6)
    assert torch.all(values[:-1] >= values[1:])
    checked = 0
    for i in range(3):
        neighbours = np.delete(exact_values, len(exact_values) - 1 - i)
        gap = np.abs(neighbours - top[i]).min() / abs(top[i])
        if gap > 1e-2:
            overlap = abs(float(vectors[i].numpy() @ exact_vectors[:, -1 - i]))
            assert overlap > 1 - 1e-6, f"eigenvector {i}: |<u, u_exact>| = {overlap}"
            checked += 1
    assert checked >= 1


def test_lanczos_stops_early_on_converged_ritz_pairs(problem):
    _, _, hessian, op = problem
    exact = torch.linalg.eigvalsh(hessian)
    before = op.calls
    values, _ = top_eigenpairs(op, 2, steps=op.size, rtol=1e-8)
    used = op.calls - before
    assert used < op.size  # stopped before the cap
    torch.testing.assert_close(values, exact.flip(0)[:2], rtol=1e-6, atol=0)
    top, bottom = extreme_eigenvalues(op, steps=op.size, rtol=1e-8)
    assert top == pytest.approx(exact[-1].item(), rel=1e-6) and bottom == pytest.approx(exact[0].item(), rel=1e-5)


def test_extreme_eigenvalues_find_negative_curvature(problem):
    _, _, hessian, op = problem
    exact = np.linalg.eigvalsh(hessian.numpy())
    assert exact[0] < -1e-4 * abs(exact[-1]), "the test point should have negative curvature"
    lambda_max, lambda_min = extreme_eigenvalues(op, seed=3)
    assert lambda_max == pytest.approx(exact[-1], rel=1e-6)
    assert lambda_min == pytest.approx(exact[0], rel=1e-6)


def test_hutchinson_within_three_standard_errors(problem):
    _, _, hessian, op = problem
    mean, stderr = hutchinson_trace(op, samples=200, seed=0)
    exact = torch.trace(hessian).item()
    assert stderr > 0
    assert abs(mean - exact) < 3 * stderr


def test_hutchpp_beats_hutchinson_on_decaying_spectrum():
    n = 120
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    spectrum = 0.5 ** torch.arange(n, dtype=torch.float64)
    op = MatrixOperator(q @ torch.diag(spectrum) @ q.T)
    exact = spectrum.sum().item()
    matvecs = 30
    pp = hutchpp_trace(op, matvecs=matvecs, seed=1)
    assert op.calls == matvecs
    plain, _ = hutchinson_trace(op, samples=matvecs, seed=1)
    assert abs(pp - exact) < 0.2 * abs(plain - exact)
    assert abs(pp - exact) < 1e-2 * exact


def test_lanczos_basis_is_orthonormal_and_tridiagonalizes():
    n = 30
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    op = MatrixOperator(a + a.T)
    alphas, betas, q = lanczos(op.matvec, n, 20, seed=4)
    assert alphas.shape == (20,) and betas.shape == (19,) and q.shape == (20, n)
    torch.testing.assert_close(q @ q.T, torch.eye(20, dtype=torch.float64), rtol=0, atol=1e-12)
    t = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
    torch.testing.assert_close(q @ op.matrix @ q.T, t, rtol=0, atol=1e-10)


def test_lanczos_stops_on_invariant_subspace():
    diagonal = torch.tensor([3.0, 1.0, 1.0, 1.0, -2.0], dtype=torch.float64)
    op = MatrixOperator(torch.diag(diagonal))
    alphas, betas, q = lanczos(op.matvec, 5, 5, seed=0)
    assert len(alphas) == 3 and len(betas) == 2 and q.shape == (3, 5)
    theta = torch.linalg.eigvalsh(torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1))
    torch.testing.assert_close(theta, torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(UserError, match="Krylov space"):
        top_eigenpairs(op, k=4, steps=5)


def test_slq_density_and_moments(problem):
    _, _, hessian, op = problem
    n = op.size
    runs = 50
    grid, density, nodes, weights = slq_density(op, runs=runs, steps=n, seed=0, sigma=1e-3)
    assert nodes.shape == weights.shape == (runs, n) and grid.shape == density.shape
    assert np.all(density >= 0)
    assert 0.5 * np.sum((density[1:] + density[:-1]) * np.diff(grid)) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-10)
    exact_values = np.linalg.eigvalsh(hessian.numpy())
    assert grid[0] < exact_values[0] and grid[-1] > exact_values[-1]
    for p, exact in ((1, np.trace(hessian.numpy()) / n), (2, np.trace(np.linalg.matrix_power(hessian.numpy(), 2)) / n)):
        per_run = (weights * nodes**p).sum(1)
        stderr = per_run.std(ddof=1) / np.sqrt(runs)
        assert abs(per_run.mean() - exact) < 4 * stderr


def test_slq_moments_exact_for_diagonal_matrix():
    diagonal = torch.linspace(-1.0, 4.0, 25, dtype=torch.float64) ** 3
    op = MatrixOperator(torch.diag(diagonal))
    _, _, nodes, weights = slq_density(op, runs=4, steps=25, seed=7, sigma=0.05)
    for p in range(5):
        np.testing.assert_allclose((weights * nodes**p).sum(1), (diagonal**p).mean().item(), rtol=1e-9, atol=1e-9)


def test_bad_arguments_raise_user_error():
    model, batches = _mlp_problem()
    op = HessianOperator(model, list(model.parameters()), batches)
    with pytest.raises(UserError, match="k <="):
        top_eigenpairs(op, k=op.size + 1)
    with pytest.raises(UserError, match="k <="):
        top_eigenpairs(op, k=0)
    with pytest.raises(UserError, match="steps >= k"):
        top_eigenpairs(op, k=5, steps=3)
    with pytest.raises(UserError, match="steps >= 1"):
        lanczos(op.matvec, op.size, 0)
    with pytest.raises(UserError, match="samples >= 2"):
        hutchinson_trace(op, samples=1)
    with pytest.raises(UserError, match="matvecs >= 3"):
        hutchpp_trace(op, matvecs=2)
    with pytest.raises(UserError, match="runs >= 1"):
        slq_density(op, runs=0, steps=5)
    with pytest.raises(UserError, match="sigma > 0"):
        slq_density(op, runs=1, steps=5, sigma=0.0)
    with pytest.raises(UserError, match="flat vector"):
        op.matvec(torch.zeros(op.size + 1, dtype=torch.float64))
    with pytest.raises(UserError, match="at least one"):
        HessianOperator(model, [], batches)
    with pytest.raises(UserError, match="require grad"):
        HessianOperator(model, [torch.zeros(3)], batches)
    with pytest.raises(UserError, match="symmetric"):
        MatrixOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(UserError, match="square"):
        MatrixOperator(torch.zeros(2, 3))
    with pytest.raises(UserError, match="empty"):
        HessianOperator(model, list(model.parameters()), []).matvec(torch.zeros(op.size, dtype=torch.float64))


def test_top_eigenpairs_tol_flags_too_few_steps():
    n = 60
    op = MatrixOperator(torch.diag(torch.linspace(0.0, 1.0, n, dtype=torch.float64)))
    with pytest.raises(UserError, match="did not converge"):
        top_eigenpairs(op, k=2, steps=5, tol=1e-8)
    values, _ = top_eigenpairs(op, k=2, steps=n, tol=1e-8)
    np.testing.assert_allclose(values.numpy(), [1.0, 1.0 - 1.0 / (n - 1)], rtol=1e-10)


STEPS = 100


def _trained_mlp_problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """An MLP trained (float64, Adam) to a small loss (~5e-3) on its samples, as a trained network is: near a
    minimum the Hessian's eigenvalues are small and rounding matters most."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(60, 6, dtype=torch.float64)
    y = (x[:, :3] * torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, [(x[:25], y[:25]), (x[25:], y[25:])]


def test_float32_products_near_a_minimum_match_the_exact_float64_hessian():
    model, batches = _trained_mlp_problem()
    with torch.no_grad():
        loss = sum(F.cross_entropy(model(x), y, reduction="sum") for x, y in batches).item() / 60
    assert 1e-3 < loss < 0.01, f"not near a minimum: loss {loss}"
    exact = _exact_hessian(model, batches)
    top = float(torch.linalg.eigvalsh(exact)[-1])
    single = [(x.float(), y) for x, y in batches]
    op = HessianOperator(model.float(), list(model.parameters()), single, keep_graph=True)
    for seed in range(3):
        v = torch.randn(op.size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        got = op.matvec(v).double()
        assert (got - exact @ v).norm() <= 1e-4 * (exact @ v).norm()
    values, _ = top_eigenpairs(op, k=1, seed=0)
    assert float(values[0]) == pytest.approx(top, rel=1e-4)

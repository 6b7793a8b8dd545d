"""The spectrum's numerics as they were before per-run densities, Ritz bounds, GGN and blocks were added (a verbatim
copy of engine/curvature/hessian.py's Lanczos, traces and SLQ, and of compute_spectrum's calls): with the new
settings at their defaults, compute_spectrum must give these numbers bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.errors import UserError
from engine.curvature.hessian import HessianOperator, LinearOperator

_BREAKDOWN = 1e-10


def _rademacher(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """±1 entries in float64 on the CPU, so every device draws the same vectors for a seed."""
    return torch.randint(0, 2, shape, generator=generator).double().mul_(2).sub_(1)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    start: torch.Tensor | None = None,
    stop: Callable[[list[float], list[float]], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lanczos with full reorthogonalization: (alphas [m], betas [m-1], Q [m, n]), m <= min(steps, n).

    The start is `start` normalized, else a seeded Gaussian unit vector; every new vector is orthogonalized twice
    (classical Gram-Schmidt) against all previous ones, and the run stops early on an invariant subspace. The
    tridiagonal (alphas, betas) is float64; the basis Q (rows) is in `dtype` on `device`.
    """
    if n < 1:
        raise UserError(f"lanczos needs n >= 1, got {n}")
    if steps < 1:
        raise UserError(f"lanczos needs steps >= 1, got {steps}")
    steps = min(steps, n)
    if start is None:
        start = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if start.shape != (n,):
        raise UserError(f"lanczos start vector needs shape ({n},), got {tuple(start.shape)}")
    start = start.to(torch.float64)
    norm = start.norm()
    if norm == 0:
        raise UserError("lanczos start vector is zero")
    basis = torch.zeros(steps, n, dtype=dtype, device=device)
    basis[0] = (start / norm).to(device, dtype)
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = matvec(basis[j]).to(device, dtype)
        alpha = torch.dot(w.double(), basis[j].double()).item()
        alphas.append(alpha)
        if j == steps - 1:
            break
        previous = basis[: j + 1]
        for _ in range(2):
            w = w - previous.T @ (previous @ w)
        beta = w.double().norm().item()
        if beta < _BREAKDOWN * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        if stop is not None and stop(alphas, betas):
            break
        basis[j + 1] = w / beta
    m = len(alphas)
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas[: m - 1], dtype=torch.float64), basis[:m]


def ritz_converged(k: int, rtol: float, smallest: bool = True) -> Callable[[list[float], list[float]], bool]:
    """A Lanczos stop rule: the top k Ritz pairs (and the smallest) are within rtol (times the largest |Ritz value|)
    by their residual bound ||H y - theta y|| = beta_m |s_mi|, which bounds each eigenvalue's error."""

    def converged(alphas: list[float], betas: list[float]) -> bool:
        m = len(alphas)
        if m <= k:
            return False
        a, b = torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas[: m - 1], dtype=torch.float64)
        theta, s = torch.linalg.eigh(_tridiagonal(a, b))
        residuals = betas[-1] * s[-1].abs()
        tracked = torch.cat([residuals[m - k :], residuals[:1]]) if smallest else residuals[m - k :]
        return bool((tracked <= rtol * theta.abs().max()).all())

    return converged


def _tridiagonal(alphas: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    return torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)


def _default_steps(n: int, k: int) -> int:
    return min(n, max(2 * k + 20, 40))


def top_eigenpairs_and_min(
    op: LinearOperator, k: int, steps: int | None = None, seed: int = 0, tol: float | None = None,
    rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """top_eigenpairs plus the smallest (most negative) Ritz value of the same Lanczos run: lambda_min for free.

    With `rtol`, Lanczos stops before `steps` once the tracked pairs converged (ritz_converged).

    With `tol`, a UserError is raised when a pair's residual bound |beta_m s_mi| exceeds tol * max(1, |theta_i|),
    i.e. when `steps` was too few for the pairs to converge.
    """
    return _top(op, k, steps, seed, tol, rtol, smallest=True)


def _top(op: LinearOperator, k: int, steps: int | None, seed: int, tol: float | None, rtol: float | None,
         smallest: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    n = op.size
    if not 1 <= k <= n:
        raise UserError(f"top_eigenpairs needs 1 <= k <= {n} (the parameter count), got k={k}")
    steps = _default_steps(n, k) if steps is None else steps
    if steps < k:
        raise UserError(f"top_eigenpairs needs steps >= k, got steps={steps}, k={k}")
    if tol is not None and tol <= 0:
        raise UserError(f"top_eigenpairs needs tol > 0, got {tol}")
    stop = ritz_converged(k, rtol, smallest) if rtol is not None else None
    alphas, betas, basis = lanczos(op.matvec, n, steps, seed, op.dtype, op.device, stop=stop)
    m = len(alphas)
    if m < k:
        raise UserError(f"the Krylov space from seed {seed} has {m} dimensions, fewer than k={k}; try another seed")
    theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
    order = torch.arange(m - 1, m - 1 - k, -1)
    values, coeffs = theta[order], s[:, order]
    if tol is not None and m < n:
        w = op.matvec(basis[-1]).to(op.device, op.dtype)
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        residuals = w.double().norm().item() * coeffs[-1].abs()
        bad = residuals > tol * values.abs().clamp(min=1.0)
        if bad.any():
            worst = residuals.max().item()
            raise UserError(f"top_eigenpairs did not converge to tol={tol} (residual {worst:.3g}); raise steps={m}")
    vectors = coeffs.T.to(op.device, op.dtype) @ basis
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    return values, vectors, theta[0].item()




def hutchinson_trace(op: LinearOperator, samples: int, seed: int = 0) -> tuple[float, float]:
    """Hutchinson's trace estimate with Rademacher probes: (mean, standard error of the mean)."""
    if samples < 2:
        raise UserError(f"hutchinson_trace needs samples >= 2 (for a standard error), got {samples}")
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(samples):
        z = _rademacher(generator, (op.size,)).to(op.device, op.dtype)
        estimates.append(torch.dot(z, op.matvec(z)).double().item())
    values = np.asarray(estimates)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(samples))


def hutchpp_trace(op: LinearOperator, matvecs: int, seed: int = 0) -> float:
    """Hutch++ (Meyer et al. 2021) with exactly `matvecs` products: exact trace on a sketched top subspace plus
    Hutchinson on its complement; far more accurate than Hutchinson for fast-decaying spectra."""
    if matvecs < 3:
        raise UserError(f"hutchpp_trace needs matvecs >= 3, got {matvecs}")
    n = op.size
    third = matvecs // 3
    probes = matvecs - 2 * third
    generator = torch.Generator().manual_seed(seed)
    sketch = _rademacher(generator, (n, third)).to(op.device, op.dtype)
    g = _rademacher(generator, (n, probes)).to(op.device, op.dtype)

    def apply(columns: torch.Tensor) -> torch.Tensor:
        return torch.stack([op.matvec(c) for c in columns.T], dim=1)

    q, _ = torch.linalg.qr(apply(sketch))
    q = q[:, :third]
    exact = torch.trace(q.T @ apply(q)).double().item()
    g = g - q @ (q.T @ g)
    g = g - q @ (q.T @ g)
    rest = (g * apply(g)).sum().double().item() / probes
    return exact + rest


def slq_nodes(op: LinearOperator, runs: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The quadrature of slq_density alone: (nodes [runs, m], weights [runs, m]), m = min(steps, n)."""
    if runs < 1:
        raise UserError(f"slq_density needs runs >= 1, got {runs}")
    if steps < 1:
        raise UserError(f"slq_density needs steps >= 1, got {steps}")
    m = min(steps, op.size)
    nodes = np.zeros((runs, m))
    weights = np.zeros((runs, m))
    generator = torch.Generator().manual_seed(seed)
    for r in range(runs):
        start = _rademacher(generator, (op.size,))
        alphas, betas, _ = lanczos(op.matvec, op.size, m, dtype=op.dtype, device=op.device, start=start)
        theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
        found = len(theta)
        nodes[r, :found] = theta.numpy()
        nodes[r, found:] = theta[-1].item()
        weights[r, :found] = (s[0] ** 2).numpy()
    return nodes, weights


def broadened_density(nodes: np.ndarray, weights: np.ndarray, sigma: float, grid_points: int = 1000,
                      pad: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(grid, density): the run-average of Gaussians of width sigma at the nodes, weighted, integrating to 1."""
    pad = 5 * sigma if pad is None else pad
    runs = len(nodes)
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, grid_points)
    density = np.zeros(grid_points)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for r in range(runs):
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[r][None, :]) / sigma) ** 2) * norm
        density += kernel @ weights[r]
    density /= runs
    density /= 0.5 * np.sum((density[1:] + density[:-1]) * np.diff(grid))  # trapezoid; np.trapz is gone in 2.x
    return grid, density


def old_spectrum(model: nn.Module, params: list[torch.Tensor], batches: list[Any],
                 cfg: HessianConfig) -> dict[str, Any]:
    """compute_spectrum's numbers by the old call path, on one process with the cross-entropy loss."""
    op = HessianOperator(model, params, batches, keep_graph=cfg.keep_graph)
    n = op.size
    k, steps = min(cfg.top_k, n), min(cfg.steps, n)
    values, vectors, lambda_min = top_eigenpairs_and_min(op, k, steps=steps, seed=cfg.seed, rtol=cfg.rtol)
    trace, stderr = hutchinson_trace(op, cfg.trace_samples, seed=cfg.seed)
    trace_pp = hutchpp_trace(op, cfg.hutchpp_matvecs, seed=cfg.seed)
    nodes, weights = slq_nodes(op, cfg.slq_runs, cfg.slq_steps, seed=cfg.seed)
    width = float(nodes.max() - nodes.min())
    grid, density = broadened_density(nodes, weights, cfg.sigma * width if width > 0 else cfg.sigma)
    return {"eigenvalues": values.numpy(), "eigenvectors": vectors.detach().float().cpu().numpy(),
            "lambda_min": lambda_min, "trace": trace, "trace_stderr": stderr, "trace_hutchpp": trace_pp, "grid": grid,
            "density": density, "nodes": nodes, "weights": weights, "matvecs": op.calls}

"""Curvature of the eval loss: exact full-batch Hessian-vector products, Lanczos top/extreme eigenpairs with their
Ritz residual bounds, Hutchinson and Hutch++ traces with standard errors, and the stochastic Lanczos quadrature (SLQ)
spectral density per run with its moments, all matrix-free (on any LinearOperator: the Hessian here, the
generalized Gauss-Newton matrix in ggn.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engine.core.errors import UserError
from engine.core.onednn import safe_autograd
from engine.sources.losses import CROSS_ENTROPY, Batches, Loss

AllReduce = Callable[[torch.Tensor], None]

_BREAKDOWN = 1e-10  # Lanczos stops when beta < _BREAKDOWN * max(1, |alpha|): the Krylov space is invariant


class LinearOperator(Protocol):
    """A symmetric linear map on flat vectors of length `size`, applied by `matvec`."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


def checked_params(params: list[torch.Tensor], what: str) -> list[torch.Tensor]:
    """params as a list, refused unless non-empty, all requiring grad, on one dtype and one device."""
    params = list(params)
    if not params:
        raise UserError(f"{what} needs at least one parameter tensor")
    if any(not p.requires_grad for p in params):
        raise UserError(f"{what} params must require grad (pass the model's parameters)")
    if len({p.dtype for p in params}) > 1 or len({p.device for p in params}) > 1:
        raise UserError(f"{what} params must share one dtype and one device")
    return params


def mean_product(total: torch.Tensor, count: torch.Tensor | int, all_reduce: AllReduce | None) -> torch.Tensor:
    """A product summed over a rank's batches, summed over the ranks with its item count, over the total count."""
    samples = torch.tensor(float(count), dtype=torch.float64, device=total.device)
    if all_reduce is not None:
        all_reduce(total)
        all_reduce(samples)
    if samples.item() == 0:
        raise UserError("the eval split is empty; check eval.samples and data")
    return total / samples.to(total.dtype)


class HessianOperator:
    """The exact Hessian of the mean eval loss w.r.t. `params`, applied by double backward, batch by batch.

    `loss.autograd` gives the loss summed over a batch and its item count; each product is divided by the total
    count. `all_reduce` (in-place sum across ranks) is applied to the summed product and the count before the
    division, for data parallelism; each rank then passes its own shard of the batches.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        batches: Batches,
        loss: Loss = CROSS_ENTROPY,
        all_reduce: AllReduce | None = None,
        keep_graph: bool = False,
    ) -> None:
        params = checked_params(params, "HessianOperator")
        self.model = model
        self.params = params
        self.batches = batches
        self.loss = loss
        self.all_reduce = all_reduce
        self.numels = [p.numel() for p in params]
        self.size = sum(self.numels)
        self.dtype = params[0].dtype
        self.device = params[0].device
        self.calls = 0
        self.keep_graph = keep_graph  # keep each batch's gradient graph between products (rebuilt on a change)
        self._graphs: list[tuple[tuple[torch.Tensor, ...], torch.Tensor | int]] = []
        self._key: tuple | None = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H @ v for a flat v of `size` entries, in eval mode (BatchNorm uses its running statistics)."""
        if v.dim() != 1 or v.numel() != self.size:
            raise UserError(f"matvec needs a flat vector of {self.size} entries, got shape {tuple(v.shape)}")
        v = v.to(self.device, self.dtype)
        pieces = [u.view_as(p) for u, p in zip(v.split(self.numels), self.params)]
        total = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        count: torch.Tensor | int = 0
        with torch.enable_grad(), safe_autograd(self.params):
            for grads, n in self._gradients():
                dot = sum((g * u).sum() for g, u in zip(grads, pieces))
                if isinstance(dot, torch.Tensor) and dot.requires_grad:
                    hv = torch.autograd.grad(dot, self.params, retain_graph=self.keep_graph, materialize_grads=True)
                    total += torch.cat([h.reshape(-1) for h in hv])
                count += n
        product = mean_product(total, count, self.all_reduce)
        self.calls += 1
        return product

    def _gradients(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor | int]]:
        """Each batch's loss gradient with its graph, and the batch's size, in eval mode.

        With keep_graph the graphs are kept, and rebuilt only when a parameter's version counter moved: an
        in-place perturbation makes a new point.
        """
        key = tuple((id(p), p._version) for p in self.params)
        if self.keep_graph and key == self._key:
            yield from self._graphs
            return
        self._graphs, self._key = [], None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), safe_autograd(self.params):
                for batch in self.batches:
                    loss, n = self.loss.autograd(self.model, batch)
                    grads = torch.autograd.grad(loss, self.params, create_graph=True, materialize_grads=True)
                    if self.keep_graph:
                        self._graphs.append((grads, n))
                    yield grads, n
        finally:
            self.model.train(was_training)
        if self.keep_graph:
            self._key = key


class MatrixOperator:
    """An explicit symmetric matrix as a LinearOperator: for tests and for small problems."""

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise UserError(f"MatrixOperator needs a square matrix, got shape {tuple(matrix.shape)}")
        scale = max(1.0, matrix.abs().max().item())
        if not torch.allclose(matrix, matrix.T, rtol=0.0, atol=1e-6 * scale):
            raise UserError("MatrixOperator needs a symmetric matrix")
        self.matrix = matrix
        self.size = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """matrix @ v for a flat v."""
        if v.dim() != 1 or v.numel() != self.size:
            raise UserError(f"matvec needs a flat vector of {self.size} entries, got shape {tuple(v.shape)}")
        self.calls += 1
        return self.matrix @ v.to(self.device, self.dtype)


class TickingOperator:
    """`op` with each product ticked on a progress bar: the products themselves are op's, untouched."""

    def __init__(self, op: LinearOperator, bar: tqdm[Any]) -> None:
        self.op, self.bar = op, bar
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """op.matvec(v), one tick on the bar."""
        out = self.op.matvec(v)
        self.bar.update(1)
        return out


def _rademacher(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """±1 entries in float64 on the CPU, so every device draws the same vectors for a seed."""
    return torch.randint(0, 2, shape, generator=generator).double().mul_(2).sub_(1)


@dataclass
class Krylov:
    """One Lanczos run: the tridiagonal (alphas [m], betas [m-1], float64), the basis Q ([m, n], rows) and the norm
    beta_m of the residual after its last step, which bounds every Ritz pair: ||H y_i - theta_i y_i|| = beta_m |s_mi|.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    basis: torch.Tensor
    residual: float


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
    run = lanczos_run(matvec, n, steps, seed, dtype, device, start, stop)
    return run.alphas, run.betas, run.basis


def lanczos_run(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    start: torch.Tensor | None = None,
    stop: Callable[[list[float], list[float]], bool] | None = None,
) -> Krylov:
    """lanczos, with the last step's residual norm beta_m kept (no extra product: the last product's vector is
    orthogonalized like every other, only not added to the basis)."""
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
    residual = 0.0
    for j in range(steps):
        w = matvec(basis[j]).to(device, dtype)
        alpha = torch.dot(w.double(), basis[j].double()).item()
        alphas.append(alpha)
        previous = basis[: j + 1]
        for _ in range(2):
            w = w - previous.T @ (previous @ w)
        beta = w.double().norm().item()
        residual = beta
        if j == steps - 1 or beta < _BREAKDOWN * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        if stop is not None and stop(alphas, betas):
            break
        basis[j + 1] = w / beta
    m = len(alphas)
    return Krylov(torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas[: m - 1], dtype=torch.float64),
                  basis[:m], residual)


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


@dataclass
class Eigenpairs:
    """The top k Ritz pairs and the smallest Ritz value of one Lanczos run, each with its Ritz residual bound: the
    exact eigenvalue nearest a Ritz value lies within its bound (to the rounding of the operator's dtype)."""

    values: torch.Tensor  # the k largest Ritz values, descending, float64 [k]
    vectors: torch.Tensor  # their unit Ritz vectors [k, n], in the operator's dtype
    bounds: torch.Tensor  # residual bounds of values, float64 [k]
    lambda_min: float  # the smallest (most negative) Ritz value
    lambda_min_bound: float
    steps: int  # Lanczos steps taken


def top_eigenpairs(
    op: LinearOperator, k: int, steps: int | None = None, seed: int = 0, tol: float | None = None,
    rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest eigenvalues (descending, float64 [k]) and unit eigenvectors ([k, n], op's dtype) by Lanczos."""
    found = _top(op, k, steps, seed, tol, rtol, smallest=False)
    return found.values, found.vectors


def top_eigenpairs_and_min(
    op: LinearOperator, k: int, steps: int | None = None, seed: int = 0, tol: float | None = None,
    rtol: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """top_eigenpairs plus the smallest (most negative) Ritz value of the same Lanczos run: lambda_min for free.

    With `rtol`, Lanczos stops before `steps` once the tracked pairs converged (ritz_converged).

    With `tol`, a UserError is raised when a pair's residual bound |beta_m s_mi| exceeds tol * max(1, |theta_i|),
    i.e. when `steps` was too few for the pairs to converge.
    """
    found = _top(op, k, steps, seed, tol, rtol, smallest=True)
    return found.values, found.vectors, found.lambda_min


def bounded_eigenpairs(
    op: LinearOperator, k: int, steps: int | None = None, seed: int = 0, rtol: float | None = None,
) -> Eigenpairs:
    """top_eigenpairs_and_min with every Ritz value's residual bound: the same run, the same products."""
    return _top(op, k, steps, seed, None, rtol, smallest=True)


def _top(op: LinearOperator, k: int, steps: int | None, seed: int, tol: float | None, rtol: float | None,
         smallest: bool) -> Eigenpairs:
    n = op.size
    if not 1 <= k <= n:
        raise UserError(f"top_eigenpairs needs 1 <= k <= {n} (the parameter count), got k={k}")
    steps = _default_steps(n, k) if steps is None else steps
    if steps < k:
        raise UserError(f"top_eigenpairs needs steps >= k, got steps={steps}, k={k}")
    if tol is not None and tol <= 0:
        raise UserError(f"top_eigenpairs needs tol > 0, got {tol}")
    stop = ritz_converged(k, rtol, smallest) if rtol is not None else None
    run = lanczos_run(op.matvec, n, steps, seed, op.dtype, op.device, stop=stop)
    alphas, betas, basis = run.alphas, run.betas, run.basis
    m = len(alphas)
    if m < k:
        raise UserError(f"the Krylov space from seed {seed} has {m} dimensions, fewer than k={k}; try another seed")
    theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
    order = torch.arange(m - 1, m - 1 - k, -1)
    values, coeffs = theta[order], s[:, order]
    residuals = run.residual * s[-1].abs()
    if tol is not None and m < n:
        bad = residuals[order] > tol * values.abs().clamp(min=1.0)
        if bad.any():
            worst = residuals[order].max().item()
            raise UserError(f"top_eigenpairs did not converge to tol={tol} (residual {worst:.3g}); raise steps={m}")
    vectors = coeffs.T.to(op.device, op.dtype) @ basis
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    floor = m * torch.finfo(op.dtype).eps * theta.abs().max().item()  # the products' own rounding
    bounds = residuals.clamp(min=floor)
    return Eigenpairs(values, vectors, bounds[order], theta[0].item(), bounds[0].item(), m)


def extreme_eigenvalues(op: LinearOperator, steps: int | None = None, seed: int = 0,
                        rtol: float | None = None) -> tuple[float, float]:
    """(lambda_max, lambda_min): the largest and the smallest (most negative) Ritz values of one Lanczos run,
    stopped early once both converged to rtol (if given)."""
    steps = _default_steps(op.size, 1) if steps is None else steps
    stop = ritz_converged(1, rtol) if rtol is not None else None
    alphas, betas, _ = lanczos(op.matvec, op.size, steps, seed, op.dtype, op.device, stop=stop)
    theta = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))
    return theta[-1].item(), theta[0].item()


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
    return hutchpp_estimate(op, matvecs, seed)[0]


def hutchpp_estimate(op: LinearOperator, matvecs: int, seed: int = 0) -> tuple[float, float]:
    """hutchpp_trace and its standard error: (trace, stderr).

    The error is that of the Hutchinson part given the sketch: the standard deviation of its per-probe values over
    sqrt(probes) (the trace on the sketched subspace is exact). The sketch's own randomness is not in it; NaN
    with fewer than 2 probes (matvecs < 5)."""
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
    products = g * apply(g)
    rest = products.sum().double().item() / probes
    per_probe = products.sum(0).double().cpu().numpy()
    stderr = float(per_probe.std(ddof=1) / math.sqrt(probes)) if probes >= 2 else math.nan
    return exact + rest, stderr


def exact_trace(op: LinearOperator) -> float:
    """The trace from n products with the unit vectors: for blocks no larger than the probes Hutchinson would take."""
    total = 0.0
    for i in range(op.size):
        e = torch.zeros(op.size, dtype=op.dtype, device=op.device)
        e[i] = 1
        total += op.matvec(e)[i].double().item()
    return total


def hutchpp_products(n: int, matvecs: int) -> int:
    """How many products hutchpp_trace makes on an operator of size n: `matvecs`, fewer when n < matvecs // 3 (the
    sketch's orthonormal basis has at most n columns)."""
    third = matvecs // 3
    return matvecs - third + min(third, n)


def slq_density(
    op: LinearOperator,
    runs: int,
    steps: int,
    seed: int = 0,
    sigma: float = 1e-2,
    grid_points: int = 1000,
    pad: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature (Ubaru et al. 2017): (grid, density, nodes [runs, m], weights [runs, m]).

    Each run starts Lanczos from a normalized Rademacher vector; nodes are the tridiagonal's eigenvalues and
    weights the squared first components of its eigenvectors, so the run-average of sum_j w_j nodes_j^p estimates
    trace(H^p) / n. The density averages Gaussians of width sigma over the runs, on a grid padded by `pad`
    (default 5 sigma) beyond the extreme nodes, normalized to integrate to 1 (trapezoid). m = min(steps, n);
    a run that stops early on an invariant subspace is padded with zero weights at its last node.
    """
    if sigma <= 0:
        raise UserError(f"slq_density needs sigma > 0, got {sigma}")
    if grid_points < 2:
        raise UserError(f"slq_density needs grid_points >= 2, got {grid_points}")
    if pad is not None and pad < 0:
        raise UserError(f"slq_density needs pad >= 0, got {pad}")
    nodes, weights = slq_nodes(op, runs, steps, seed)
    grid, density = broadened_density(nodes, weights, sigma, grid_points, pad)
    return grid, density, nodes, weights


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
    grid, density, _ = broadened_density_runs(nodes, weights, sigma, grid_points, pad)
    return grid, density


def broadened_density_runs(nodes: np.ndarray, weights: np.ndarray, sigma: float, grid_points: int = 1000,
                           pad: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """broadened_density and each run's own density on the same grid ([runs, grid_points]), scaled by the same
    constant, so their mean is the density and their spread is how much one SLQ run varies."""
    pad = 5 * sigma if pad is None else pad
    runs = len(nodes)
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, grid_points)
    density = np.zeros(grid_points)
    each = np.zeros((runs, grid_points))
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for r in range(runs):
        kernel = np.exp(-0.5 * ((grid[:, None] - nodes[r][None, :]) / sigma) ** 2) * norm
        each[r] = kernel @ weights[r]
        density += each[r]
    density /= runs
    scale = 0.5 * np.sum((density[1:] + density[:-1]) * np.diff(grid))  # trapezoid; np.trapz is gone in 2.x
    density /= scale
    each /= scale
    return grid, density, each


def slq_moments(nodes: np.ndarray, weights: np.ndarray,
                powers: tuple[int, ...] = (1, 2)) -> dict[int, tuple[float, float]]:
    """{p: (mean, standard error)} of the SLQ estimates sum_j w_j nodes_j^p of trace(H^p) / n over the runs (the
    error is their standard deviation over sqrt(runs); NaN for one run)."""
    runs = len(nodes)
    out: dict[int, tuple[float, float]] = {}
    for p in powers:
        per_run = (weights * nodes**p).sum(1)
        stderr = float(per_run.std(ddof=1) / math.sqrt(runs)) if runs >= 2 else math.nan
        out[p] = (float(per_run.mean()), stderr)
    return out

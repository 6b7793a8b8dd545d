"""Hessian spectra and curvature maps as stages of a run (the numerics are in engine/curvature/hessian.py).

Spectra at theta*: top-k eigenpairs and lambda_min with their Ritz residual bounds, the Hutchinson and Hutch++ traces
with standard errors, the SLQ density per run and its moments, per-block curvature (hessian.blocks), of the Hessian
or the generalized Gauss-Newton matrix (hessian.matrix), and which of these estimates are wider than
hessian.tolerance. They use data-parallel products: each rank takes every world_size-th batch and the products
are all-reduced, so every rank runs the same Lanczos and holds the same numbers.

Curvature maps (lambda_max, lambda_min and |lambda_min / lambda_max| at each grid point, Li et al. 2018) are
extra metrics of the tile sweep: a rank computes them, with all the Hessian batches, at the points of the
tiles it claimed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.core.progress import planned, progress_bar
from engine.curvature.blocks import Block, BlockSpectra, blocks_kind, parameter_blocks
from engine.curvature.ggn import GGNOperator
from engine.curvature.hessian import (
    HessianOperator,
    LinearOperator,
    TickingOperator,
    bounded_eigenpairs,
    broadened_density_runs,
    exact_trace,
    extreme_eigenvalues,
    hutchinson_trace,
    hutchpp_estimate,
    hutchpp_products,
    slq_moments,
    slq_nodes,
    top_eigenpairs_and_min,
)
from engine.sources.batches import device_batches
from engine.sources.losses import CROSS_ENTROPY, Loss
from engine.sources.splits import AnySplit, held, subsample
from engine.sources.structure import Batch

log = logging.getLogger(__name__)

CURVATURE_METRICS = ("hessian/lambda_max", "hessian/lambda_min", "hessian/ratio")
Batches = list[Batch]


def hessian_params(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The perturbed tensors the Hessian is taken over: the parameters (BN running statistics have no gradient)."""
    params: list[torch.Tensor] = [t for t in tensors if isinstance(t, nn.Parameter) and t.requires_grad]
    if not params:
        raise UserError("the Hessian needs trainable parameters among the perturbed tensors; the model has none")
    return params


def hessian_batches(split: AnySplit, cfg: HessianConfig, seed: int, device: torch.device) -> Batches:
    """The samples the Hessian is taken over (hessian.samples of the eval split), batched on the device."""
    return device_batches(held(subsample(split, cfg.samples, seed)), cfg.batch_size, device)


def operator(model: nn.Module, params: list[torch.Tensor], batches: Batches, env: DistEnv,
             keep_graph: bool = True, loss: Loss = CROSS_ENTROPY,
             matrix: str = "hessian") -> HessianOperator | GGNOperator:
    """The Hessian (or, with matrix="ggn", the generalized Gauss-Newton matrix) of the mean loss over all batches;
    on N ranks each takes every N-th batch, products all-reduced."""
    kind = GGNOperator if matrix == "ggn" else HessianOperator
    if env.world_size == 1 or not dist.is_initialized():
        return kind(model, params, batches, loss, keep_graph=keep_graph)
    return kind(model, params, batches[env.rank :: env.world_size], loss, all_reduce=sum_over_ranks,
                keep_graph=keep_graph)


def sum_over_ranks(t: torch.Tensor) -> None:
    """Sum t in place over every rank."""
    dist.all_reduce(t)


class CurvatureProbe:
    """lambda_max, lambda_min and |lambda_min / lambda_max| of the Hessian at the model's current weights."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], batches: Batches, cfg: HessianConfig,
                 loss: Loss = CROSS_ENTROPY) -> None:
        self.op = HessianOperator(model, params, batches, loss, keep_graph=cfg.keep_graph)
        self.steps, self.seed, self.rtol = cfg.curvature_steps, cfg.seed, cfg.rtol

    def __call__(self) -> dict[str, float]:
        try:
            top, bottom = extreme_eigenvalues(self.op, min(self.steps, self.op.size), self.seed, self.rtol)
        except (RuntimeError, UserError):  # non-finite products far from theta*: eigh fails on NaN
            top = bottom = math.nan
        ratio = abs(bottom / top) if top != 0 and math.isfinite(top) and math.isfinite(bottom) else math.nan
        return dict(zip(CURVATURE_METRICS, (top, bottom, ratio)))


DEFAULT_TOLERANCE = 1e-2  # hessian.tolerance's default: what a store written before it was set is judged by


@dataclass
class Spectrum:
    """The spectra at one point of weight space, as plain numbers and arrays (the fields after `seconds` are None
    in a store written before they existed)."""

    eigenvalues: np.ndarray  # top-k, descending
    eigenvectors: np.ndarray  # [k, n], unit rows
    lambda_min: float
    trace: float  # Hutchinson
    trace_stderr: float
    trace_hutchpp: float
    grid: np.ndarray  # SLQ density's eigenvalue grid
    density: np.ndarray
    nodes: np.ndarray  # SLQ quadrature [runs, steps]
    weights: np.ndarray
    params: int
    matvecs: int
    seconds: float
    eigenvalue_bounds: np.ndarray | None = None  # Ritz residual bound of each top eigenvalue
    lambda_min_bound: float | None = None
    trace_hutchpp_stderr: float | None = None  # of Hutch++'s probe part, given its sketch (NaN: under 2 probes)
    density_runs: np.ndarray | None = None  # each SLQ run's density on grid [runs, grid], scaled like density
    matrix: str = "hessian"  # hessian | ggn
    tolerance: float = DEFAULT_TOLERANCE  # relative error above which an estimate is flagged
    blocks: BlockSpectra | None = None  # per-block curvature (hessian.blocks)

    def moments(self) -> dict[str, float | None]:
        """The SLQ density's moments with standard errors over its runs: the mean eigenvalue trace/n, the second
        moment trace(H^2)/n, and the trace n * mean they give."""
        m = slq_moments(self.nodes, self.weights)
        (mean, mean_se), (second, second_se) = m[1], m[2]
        return {"mean": mean, "mean_stderr": _finite(mean_se), "second": second, "second_stderr": _finite(second_se),
                "trace": self.params * mean, "trace_stderr": _finite(self.params * mean_se)}

    def numbers(self) -> dict[str, Any]:
        """The scalar results (for summary.json and the store's attributes)."""
        out: dict[str, Any] = {
            "lambda_max": float(self.eigenvalues[0]), "lambda_min": self.lambda_min,
            "ratio": abs(self.lambda_min / self.eigenvalues[0]) if self.eigenvalues[0] else None,
            "top_eigenvalues": [float(v) for v in self.eigenvalues], "trace_hutchinson": self.trace,
            "trace_stderr": self.trace_stderr, "trace_hutchpp": self.trace_hutchpp, "params": self.params,
            "hessian_vector_products": self.matvecs, "seconds": self.seconds, "matrix": self.matrix}
        if self.eigenvalue_bounds is not None:
            out["eigenvalue_bounds"] = [float(v) for v in self.eigenvalue_bounds]
        if self.lambda_min_bound is not None:
            out["lambda_min_bound"] = self.lambda_min_bound
        if self.trace_hutchpp_stderr is not None:
            out["trace_hutchpp_stderr"] = _finite(self.trace_hutchpp_stderr)
        out["slq_moments"] = self.moments()
        if self.blocks is not None:
            out["blocks"] = self.blocks.numbers()
        out["convergence"] = self.convergence()
        return out

    def convergence(self) -> dict[str, Any]:
        """Which estimates are wider than `tolerance`, and the setting that narrows each.

        Relative to: eigenvalues (Ritz residual bounds), the largest |eigenvalue| of their matrix (the scale of
        hessian.rtol); traces and moments (standard errors), their own |value|. An estimate with no error to judge
        (one SLQ run, one Hutch++ probe) is flagged too. Estimates a store written before they existed lacks
        (bounds, Hutch++'s error) are not judged."""
        checks: list[tuple[str, float, float | None, float, str]] = []
        scale = max(abs(float(self.eigenvalues[0])), abs(self.lambda_min))
        if self.eigenvalue_bounds is not None:
            checks += [(f"eigenvalues[{i}]", float(v), float(b), scale, "hessian.steps")
                       for i, (v, b) in enumerate(zip(self.eigenvalues, self.eigenvalue_bounds))]
        if self.lambda_min_bound is not None:
            checks.append(("lambda_min", self.lambda_min, self.lambda_min_bound, scale, "hessian.steps"))
        checks.append(("trace_hutchinson", self.trace, self.trace_stderr, abs(self.trace), "hessian.trace_samples"))
        if self.trace_hutchpp_stderr is not None:
            checks.append(("trace_hutchpp", self.trace_hutchpp, self.trace_hutchpp_stderr, abs(self.trace_hutchpp),
                           "hessian.hutchpp_matvecs"))
        m = self.moments()
        for name, key in (("slq_mean", "mean"), ("slq_second_moment", "second")):
            value = cast(float, m[key])
            checks.append((name, value, m[f"{key}_stderr"], abs(value), "hessian.slq_runs"))
        if self.blocks is not None:
            b = self.blocks
            for i, name in enumerate(b.names):
                top, bottom = float(b.lambda_max[i]), float(b.lambda_min[i])
                block_scale = max(abs(top), abs(bottom))
                checks += [(f"blocks[{name}].lambda_max", top, float(b.lambda_max_bound[i]), block_scale,
                            "hessian.steps"),
                           (f"blocks[{name}].lambda_min", bottom, float(b.lambda_min_bound[i]), block_scale,
                            "hessian.steps"),
                           (f"blocks[{name}].trace", float(b.trace[i]), float(b.trace_stderr[i]),
                            abs(float(b.trace[i])), "hessian.trace_samples")]
        flagged: dict[str, dict[str, Any]] = {}
        for name, value, error, against, setting in checks:
            if error is None or not math.isfinite(error):
                flagged[name] = {"value": value, "error": None, "relative": None, "raise": setting}
                continue
            relative = error / against if against > 0 else (0.0 if error == 0 else math.inf)
            if relative > self.tolerance:
                flagged[name] = {"value": value, "error": error, "relative": _finite(relative), "raise": setting}
        return {"tolerance": self.tolerance, "converged": not flagged, "flagged": flagged,
                "raise": sorted({f["raise"] for f in flagged.values()})}


def _finite(value: float) -> float | None:
    """value, or None when it is NaN or infinite (JSON has neither)."""
    return float(value) if math.isfinite(value) else None


def block_products(size: int, cfg: HessianConfig) -> int:
    """The products one block's numbers take unless Lanczos stops early: its Lanczos steps and its trace's probes
    (the exact trace's n unit vectors when n <= hessian.trace_samples)."""
    return min(cfg.steps, size) + min(cfg.trace_samples, size)


def block_curvature(model: nn.Module, blocks: list[Block], batches: Batches, cfg: HessianConfig, env: DistEnv,
                    loss: Loss, tick: Callable[[LinearOperator], LinearOperator]) -> BlockSpectra:
    """lambda_max, lambda_min (one Lanczos run, k=1, with bounds) and the trace (exact, or Hutchinson with its
    standard error) of each block's diagonal block of the matrix, on the same batches and ranks as the full one."""
    rows: list[tuple[float, ...]] = []
    calls = 0
    for block in blocks:
        op = operator(model, block.params, batches, env, cfg.keep_graph, loss, cfg.matrix)
        ticked = tick(op)
        found = bounded_eigenpairs(ticked, 1, steps=min(cfg.steps, op.size), seed=cfg.seed, rtol=cfg.rtol)
        if op.size <= cfg.trace_samples:
            trace, stderr = exact_trace(ticked), 0.0
        else:
            trace, stderr = hutchinson_trace(ticked, cfg.trace_samples, seed=cfg.seed)
        rows.append((float(found.values[0]), float(found.bounds[0]), found.lambda_min, found.lambda_min_bound, trace,
                     stderr))
        calls += op.calls
    top, top_bound, bottom, bottom_bound, trace_b, trace_se = np.asarray(rows, dtype=np.float64).reshape(-1, 6).T
    return BlockSpectra(blocks_kind(cfg.blocks), [b.name for b in blocks], np.asarray([b.size for b in blocks]), top,
                        top_bound, bottom, bottom_bound, trace_b, trace_se, calls)


def compute_spectrum(model: nn.Module, params: list[torch.Tensor], batches: Batches, cfg: HessianConfig,
                     env: DistEnv, loss: Loss = CROSS_ENTROPY, progress: bool = False) -> Spectrum:
    """Every spectrum of the Hessian (or GGN, hessian.matrix) at the model's current weights, data-parallel over
    the ranks, per block too with hessian.blocks; with progress, rank 0 shows one bar over the planned products,
    phase by phase."""
    start = time.perf_counter()
    op = operator(model, params, batches, env, cfg.keep_graph, loss, cfg.matrix)
    n = op.size
    k, steps = min(cfg.top_k, n), min(cfg.steps, n)
    plan = {"lanczos": steps, "hutchinson": cfg.trace_samples, "hutch++": hutchpp_products(n, cfg.hutchpp_matvecs),
            "slq": cfg.slq_runs * min(cfg.slq_steps, n)}  # the products each phase makes unless it stops early
    groups = parameter_blocks(model, params, cfg.blocks) if cfg.blocks is not None else []
    if groups:
        plan["blocks"] = sum(block_products(b.size, cfg) for b in groups)
    blocks = None
    with progress_bar(sum(plan.values()), "spectrum", "hvp", progress and env.is_main) as bar:
        ticked = TickingOperator(op, bar)
        with planned(bar, plan["lanczos"], "lanczos"):  # stops early once the Ritz pairs converged (hessian.rtol)
            found = bounded_eigenpairs(ticked, k, steps=steps, seed=cfg.seed, rtol=cfg.rtol)
        with planned(bar, plan["hutchinson"], "hutchinson"):
            trace, stderr = hutchinson_trace(ticked, cfg.trace_samples, seed=cfg.seed)
        with planned(bar, plan["hutch++"], "hutch++"):
            trace_pp, trace_pp_stderr = hutchpp_estimate(ticked, cfg.hutchpp_matvecs, seed=cfg.seed)
        with planned(bar, plan["slq"], "slq"):  # a run stops early on an invariant subspace
            nodes, weights = slq_nodes(ticked, cfg.slq_runs, cfg.slq_steps, seed=cfg.seed)
        if groups:
            with planned(bar, plan["blocks"], "blocks"):  # each block's Lanczos stops early like the full one's
                blocks = block_curvature(model, groups, batches, cfg, env, loss, lambda o: TickingOperator(o, bar))
    width = float(nodes.max() - nodes.min())
    grid, density, each = broadened_density_runs(nodes, weights, cfg.sigma * width if width > 0 else cfg.sigma)
    seconds = time.perf_counter() - start
    values, lambda_min = found.values, found.lambda_min
    log.info("spectrum (%s): lambda_max %.6g, lambda_min %.6g, trace %.6g +- %.2g (Hutch++ %.6g), %d products in "
             "%.1f s", cfg.matrix, values[0].item(), lambda_min, trace, stderr, trace_pp, op.calls, seconds)
    return Spectrum(values.numpy(), found.vectors.detach().float().cpu().numpy(), lambda_min, trace, stderr, trace_pp,
                    grid, density, nodes, weights, op.size, op.calls, seconds, found.bounds.numpy(),
                    found.lambda_min_bound, trace_pp_stderr, each, cfg.matrix, cfg.tolerance, blocks)


def hessian_directions(model: nn.Module, tensors: list[torch.Tensor], batches: Batches, cfg: HessianConfig,
                       env: DistEnv, ndim: int, loss: Loss = CROSS_ENTROPY,
                       progress: bool = False) -> list[list[torch.Tensor]]:
    """The top `ndim` Hessian eigenvectors at theta* as directions over the perturbed tensors (zero on buffers);
    with progress, rank 0 shows a bar over the Lanczos products."""
    params = hessian_params(tensors)
    op = operator(model, params, batches, env, cfg.keep_graph, loss)
    steps = min(max(cfg.steps, ndim), op.size)
    bar = progress_bar(steps, "hessian directions", "hvp", progress and env.is_main)
    with bar, planned(bar, steps, "lanczos"):  # stops early once the Ritz pairs converged (hessian.rtol)
        _, vectors, _ = top_eigenpairs_and_min(TickingOperator(op, bar), ndim, steps=steps, seed=cfg.seed,
                                               rtol=cfg.rtol)
    out = []
    for v in vectors:
        pieces = iter(v.detach().split([p.numel() for p in params]))
        by_id = {id(p): next(pieces).view_as(p).clone() for p in params}
        out.append([by_id.get(id(t), torch.zeros_like(t)) for t in tensors])
    return out


def spectrum_json(spectrum: Spectrum, path: Path) -> None:
    """The spectrum's numbers as JSON beside the store."""
    numbers: dict[str, Any] = {k: getattr(spectrum, k) for k in ("lambda_min", "trace", "trace_stderr",
                                                                 "trace_hutchpp", "params", "matvecs", "seconds")}
    numbers.update(spectrum.numbers())
    path.write_text(json.dumps(numbers, indent=2) + "\n")

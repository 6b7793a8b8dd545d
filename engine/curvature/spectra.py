"""Hessian spectra and curvature maps as stages of a run (the numerics are in engine/curvature/hessian.py).

Spectra at theta*: top-k eigenpairs, lambda_min, the Hutchinson and Hutch++ traces and the SLQ density.
They use a data-parallel Hessian-vector product: each rank takes every world_size-th batch and the products
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.core.progress import planned, progress_bar
from engine.curvature.hessian import (
    HessianOperator,
    TickingOperator,
    broadened_density,
    extreme_eigenvalues,
    hutchinson_trace,
    hutchpp_products,
    hutchpp_trace,
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
             keep_graph: bool = True, loss: Loss = CROSS_ENTROPY) -> HessianOperator:
    """The Hessian of the mean loss over all batches; on N ranks each takes every N-th batch, products all-reduced."""
    if env.world_size == 1 or not dist.is_initialized():
        return HessianOperator(model, params, batches, loss, keep_graph=keep_graph)
    return HessianOperator(model, params, batches[env.rank :: env.world_size], loss, all_reduce=sum_over_ranks,
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


@dataclass
class Spectrum:
    """The spectra at one point of weight space, as plain numbers and arrays."""

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

    def numbers(self) -> dict[str, Any]:
        """The scalar results (for summary.json and the store's attributes)."""
        return {"lambda_max": float(self.eigenvalues[0]), "lambda_min": self.lambda_min,
                "ratio": abs(self.lambda_min / self.eigenvalues[0]) if self.eigenvalues[0] else None,
                "top_eigenvalues": [float(v) for v in self.eigenvalues], "trace_hutchinson": self.trace,
                "trace_stderr": self.trace_stderr, "trace_hutchpp": self.trace_hutchpp, "params": self.params,
                "hessian_vector_products": self.matvecs, "seconds": self.seconds}


def compute_spectrum(model: nn.Module, params: list[torch.Tensor], batches: Batches, cfg: HessianConfig,
                     env: DistEnv, loss: Loss = CROSS_ENTROPY, progress: bool = False) -> Spectrum:
    """Every spectrum of the Hessian at the model's current weights (data-parallel over the ranks); with progress,
    rank 0 shows one bar over the planned Hessian-vector products, phase by phase."""
    start = time.perf_counter()
    op = operator(model, params, batches, env, cfg.keep_graph, loss)
    n = op.size
    k, steps = min(cfg.top_k, n), min(cfg.steps, n)
    plan = {"lanczos": steps, "hutchinson": cfg.trace_samples, "hutch++": hutchpp_products(n, cfg.hutchpp_matvecs),
            "slq": cfg.slq_runs * min(cfg.slq_steps, n)}  # the products each phase makes unless it stops early
    with progress_bar(sum(plan.values()), "spectrum", "hvp", progress and env.is_main) as bar:
        ticked = TickingOperator(op, bar)
        with planned(bar, plan["lanczos"], "lanczos"):  # stops early once the Ritz pairs converged (hessian.rtol)
            values, vectors, lambda_min = top_eigenpairs_and_min(ticked, k, steps=steps, seed=cfg.seed, rtol=cfg.rtol)
        with planned(bar, plan["hutchinson"], "hutchinson"):
            trace, stderr = hutchinson_trace(ticked, cfg.trace_samples, seed=cfg.seed)
        with planned(bar, plan["hutch++"], "hutch++"):
            trace_pp = hutchpp_trace(ticked, cfg.hutchpp_matvecs, seed=cfg.seed)
        with planned(bar, plan["slq"], "slq"):  # a run stops early on an invariant subspace
            nodes, weights = slq_nodes(ticked, cfg.slq_runs, cfg.slq_steps, seed=cfg.seed)
    width = float(nodes.max() - nodes.min())
    grid, density = broadened_density(nodes, weights, cfg.sigma * width if width > 0 else cfg.sigma)
    seconds = time.perf_counter() - start
    log.info("spectrum: lambda_max %.6g, lambda_min %.6g, trace %.6g +- %.2g (Hutch++ %.6g), %d products in %.1f s",
             values[0].item(), lambda_min, trace, stderr, trace_pp, op.calls, seconds)
    return Spectrum(values.numpy(), vectors.detach().float().cpu().numpy(), lambda_min, trace, stderr, trace_pp,
                    grid, density, nodes, weights, op.size, op.calls, seconds)


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
    numbers = {k: v for k, v in asdict(spectrum).items() if not isinstance(v, np.ndarray)}
    numbers.update(spectrum.numbers())
    path.write_text(json.dumps(numbers, indent=2) + "\n")

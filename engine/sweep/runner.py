"""The point runner of a sweep: how one batch of grid points is evaluated (K stacked points under vmap, or in place
with the graph rewrites), and the eval batch size, both chosen by timing on rank 0 when not configured."""

from __future__ import annotations

import logging
import time
from typing import cast

import numpy as np
import torch
from torch import nn

from engine.config.schema import RunConfig
from engine.core.dist import DistEnv, broadcast_value, on_main
from engine.core.hostalloc import release_freed_memory
from engine.core.memory import current_bytes, peak_bytes, reset_peak
from engine.directions.kinds import CoefficientMap
from engine.sources.batches import EvalBatches, device_batches
from engine.sources.batchnorm import BatchNormRecalibrator, batchnorm_buffers
from engine.sources.losses import CROSS_ENTROPY, Loss, evaluate
from engine.sources.splits import Split
from engine.store.grid import GridPlan
from engine.sweep.on_access import OnAccessPerturber
from engine.sweep.perturb import LOW_PRECISION, Perturber
from engine.sweep.rewrite import rewrite
from engine.sweep.stacked import make_stacked
from engine.sweep.vectorized import PointRunner, PointsEvaluator, choose_k, make_evaluator, points_per_pass

log = logging.getLogger("engine")


def make_runner(
    cfg: RunConfig, model: nn.Module, names: list[str], tensors: list[torch.Tensor],
    directions: list[list[torch.Tensor]], batches: EvalBatches, env: DistEnv, tune_on: GridPlan | None,
    end: list[torch.Tensor] | None = None, recalibrate: BatchNormRecalibrator | None = None,
    logged: list[bool] | None = None, loss: Loss = CROSS_ENTROPY, coefficients: CoefficientMap | None = None,
) -> PointRunner:
    """The point evaluator: K stacked points under vmap where the model allows it, else in place (K = 1).

    eval.points_per_pass fixes K; left null, rank 0 times K = 1, 2, 4, ... up to what eval.memory_gb allows
    on points of tune_on (None: no timing) and every rank uses its choice (so all ranks compute alike).
    """
    e = cfg.eval
    perturber = make_perturber(cfg, model, tensors, directions, end, recalibrate, logged)
    theta = [t.detach() for t in tensors]
    low = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.dtype in LOW_PRECISION})
    # lerped points, per-point BN statistics, and a bfloat16/float16 model (each point's weights are computed in
    # float32 and rounded once by the Perturber; the rewrites and stacked points would compute them in low precision);
    # weights made on access are read by the model as it is, one point at a time
    on_access = e.perturb == "on_access"
    in_place_only = end is not None or recalibrate is not None or bool(low) or on_access
    on = set(e.rewrites) if not low and not on_access else set()
    if on_access:
        log.info("eval.perturb=on_access: no copy of theta*; each weight is made at the point when it is read")
    if low and (e.rewrites or e.points_per_pass not in (None, 1)):
        log.info("model in %s: points are evaluated one at a time in place, without graph rewrites", "/".join(low))
    fast: nn.Module | None = None
    if e.compile:  # inductor fuses by itself; the rewrites' Python-side caches would make it recompile per point
        fast = cast(nn.Module, torch.compile(model))  # an OptimizedModule; torch's stubs say Callable
    elif on and not tensor_pairs(batches):
        log.warning("graph rewrites unavailable: the eval batches are not (input tensor, target) pairs; evaluating "
                    "the model as it is")
    elif on:
        fast = rewrite(
            model, names, perturber.theta, directions, batches[0][0][:8], fold_batchnorm="fold_batchnorm" in on,
            input_products="input_products" in on and isinstance(batches, list) and end is None,
            in_place="in_place" in on,
            transposed_head="transposed_head" in on, budget_gb=e.memory_gb / 4)
        if fast is not None:
            fast.register([x for x, _ in batches])
    evaluator: PointsEvaluator | None = None
    k_max = points_per_pass(model, theta, batches, e.memory_gb, loss=loss, count=len(directions)) \
        if e.points_per_pass is None and tune_on is not None and not in_place_only else 0
    if k_max == 1:
        log.info("points per pass: K=1 (stacked points' copies of the weights would not fit eval.memory_gb=%g)",
                 e.memory_gb)
    if e.points_per_pass != 1 and not in_place_only and k_max != 1:
        if "stacked_graph" in on and not e.compile and tensor_pairs(batches):
            evaluator = make_stacked(model, names, theta, directions, batches, e.precision, logged, loss,
                                     e.memory_gb / 4)
        evaluator = evaluator or make_evaluator(model, names, theta, directions, batches, e.precision, logged, loss)
    runner = PointRunner(model, perturber, batches, e.precision, evaluator, e.points_per_pass or 1, fast, loss=loss,
                         coefficients=coefficients)
    if e.points_per_pass is None and evaluator is not None and tune_on is not None:
        grid = np.stack(np.meshgrid(*tune_on.coords, indexing="ij"), -1).reshape(-1, tune_on.ndim)
        with perturber.active():
            picked = on_main(env, lambda: choose_k(runner, grid[:: max(1, len(grid) // 64)], k_max,
                                                          e.memory_gb * 2**30))
        runner.k = broadcast_value(env, picked)
        if runner.k == 1:
            runner.evaluator = None  # every rank lets go of the stacked evaluator's flat copies
            release_freed_memory()
        log.info("points per pass: K=%d (memory allows %d)", runner.k, k_max)
    return runner


def make_perturber(cfg: RunConfig, model: nn.Module, tensors: list[torch.Tensor],
                   directions: list[list[torch.Tensor]], end: list[torch.Tensor] | None = None,
                   recalibrate: BatchNormRecalibrator | None = None,
                   logged: list[bool] | None = None) -> Perturber | OnAccessPerturber:
    """What moves the model between points, by eval.perturb: the weights in place (theta* kept as a copy), or made
    on access from the untouched theta*."""
    if cfg.eval.perturb == "on_access":
        return OnAccessPerturber(model, tensors, directions, end, logged)
    return Perturber(tensors, directions, end, recalibrate,
                     batchnorm_buffers(model) if recalibrate is not None else None, logged)


def tensor_pairs(batches: EvalBatches) -> bool:
    """Whether the batches are (input tensor, target) pairs, the form the graph rewrites trace."""
    first = batches[0]
    return isinstance(first, tuple | list) and len(first) == 2 and isinstance(first[0], torch.Tensor)


def choose_batch_size(
    model: torch.nn.Module, split: Split, device: torch.device, precision: str = "fp32", smallest: int = 32,
    loss: Loss = CROSS_ENTROPY, budget_bytes: float | None = None,
) -> int:
    """The eval batch size with the least time per pass over the split: 32, 64, ... up to the whole split.

    Timed at theta* (one warm-up and one timed pass each); stops once a size is 20% slower than the best, or once
    a pass takes more memory than budget_bytes (measured: resident bytes on a CPU, allocated on a GPU).
    """
    sizes = [b for b in (smallest << i for i in range(12)) if b < len(split)] + [len(split)]
    best_b, best_t = sizes[0], float("inf")
    for b in sizes:
        before = current_bytes(device)
        reset_peak(device)
        batches = device_batches(split, b, device)
        evaluate(model, batches, precision, loss)
        start = time.perf_counter()
        evaluate(model, batches, precision, loss)
        seconds = time.perf_counter() - start
        used = peak_bytes(device) - before
        del batches
        if budget_bytes is not None and b > sizes[0] and used > budget_bytes:
            log.info("eval batch size %d takes %.2f GB, more than eval.memory_gb: not used", b, used / 1e9)
            break
        if seconds < best_t:
            best_b, best_t = b, seconds
        elif seconds > 1.2 * best_t:
            break
    return best_b

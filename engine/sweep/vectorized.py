"""Many grid points per forward pass: torch.func.functional_call under torch.vmap over K stacked parameter sets.

theta_k = theta* + sum_j c_kj d_j is built for all K points at once (one tensordot per tensor, no Python loop
over points); the eval batches are shared, so small models fill the hardware. Models vmap cannot handle are
detected up front and the caller falls back to the in-place K = 1 path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from engine.core.hostalloc import release_freed_memory
from engine.core.memory import current_bytes, peak_bytes, reset_peak
from engine.directions.kinds import CoefficientMap, coefficients_at
from engine.sources.batches import EvalBatches
from engine.sources.losses import CROSS_ENTROPY, Loss, autocast, evaluate, first_device
from engine.sources.structure import Batch, map_tensors, take
from engine.sweep.on_access import OnAccessPerturber
from engine.sweep.perturb import Perturber

log = logging.getLogger(__name__)


class PointsEvaluator:
    """The loss's metrics at K grid points per pass over the cached batches."""

    def __init__(
        self, model: nn.Module, names: list[str], theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
        batches: EvalBatches, precision: str = "fp32", logged: list[bool] | None = None, loss: Loss = CROSS_ENTROPY,
    ) -> None:
        self.model = model.eval()
        self.logged = {n for n, m in zip(names, logged or []) if m}  # exp(log theta* + c @ d): BN variances
        self.precision = precision
        self.batches = batches
        self.loss = loss
        # theta* (logs where logged) and the directions, each as one flat row: a pass's K points are then one
        # matrix product (contiguous, not channels_last, views: vmap has no batching rule for channels_last strides)
        self.shapes = {n: t.shape for n, t in zip(names, theta)}
        self.theta_flat = torch.cat([(t.detach().log() if n in self.logged else t.detach()).reshape(-1)
                                     for n, t in zip(names, theta)])
        self.dirs_flat = torch.stack([torch.cat([t.reshape(-1).to(self.theta_flat.dtype) for t in d])
                                      for d in directions])
        self.theta = self.views(self.theta_flat)
        self._call = torch.vmap(self.forward, in_dims=(0, None))

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: view} of a flat [..., P] tensor laid out as theta_flat, each [..., *shape]."""
        sizes = [s.numel() for s in self.shapes.values()]
        return {n: part.view(*flat.shape[:-1], *shape)
                for (n, shape), part in zip(self.shapes.items(), flat.split(sizes, dim=-1))}

    def forward(self, params: dict[str, torch.Tensor], batch: Batch) -> Any:
        """The loss's forward pass with the model's tensors replaced by params (one point; vmapped over K)."""
        return self.loss.forward(lambda *args, **kwargs: functional_call(self.model, params, args, kwargs), batch)

    def stacked(self, coords: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: [K, *shape]} = theta* + coords @ directions, for every perturbed tensor (exp'd in log space)."""
        out = self.views(torch.addmm(self.theta_flat, coords.to(self.theta_flat.dtype), self.dirs_flat))
        for n in self.logged:
            out[n].exp_()
        return out

    def pass_output(self, params: dict[str, torch.Tensor], coords: torch.Tensor, batch: Batch) -> Any:
        """The model's output at the K points (params, stacked from coords) on one batch, [K, ...]."""
        return self._call(params, batch)

    @torch.inference_mode()
    def evaluate(self, coords: np.ndarray, batches: EvalBatches | None = None) -> dict[str, np.ndarray]:
        """The loss's mean metrics at each of the K points in coords ([K, ndim]) over the batches (default: the
        evaluator's); one host sync at the end."""
        device = next(iter(self.theta.values())).device
        points = torch.as_tensor(coords, dtype=torch.float64, device=device)
        params = self.stacked(points)
        k = len(coords)
        total: dict[str, torch.Tensor] = {}
        for batch in self.batches if batches is None else batches:
            batch = map_tensors(batch, lambda t: t.contiguous())  # vmap lacks channels_last rules (as_strided_)
            with autocast(first_device(batch), self.precision):
                out = self.pass_output(params, points, batch)
            for key, value in self.loss.stacked_sums(out, batch, k).items():
                total[key] = value if key not in total else total[key] + value
        summed = {key: value.cpu().numpy() for key, value in total.items()}
        return {m: np.asarray(v) for m, v in self.loss.means(summed).items()}


def activation_bytes(model: nn.Module, batch: Batch, loss: Loss = CROSS_ENTROPY) -> int:
    """Bytes of every module output of one forward pass on batch: an upper bound on its activation memory."""
    total = 0

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.inference_mode():
            loss.forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    return total


def points_per_pass(model: nn.Module, theta: list[torch.Tensor], batches: EvalBatches, budget_gb: float,
                    limit: int = 256, loss: Loss = CROSS_ENTROPY, count: int = 2) -> int:
    """K from a memory budget: the evaluator's flat copies of theta* and the `count` directions come first, then each
    stacked point costs its perturbed tensors plus one batch's activations. 1: stacking does not fit."""
    weights = sum(t.numel() * t.element_size() for t in theta)
    per_point = weights + activation_bytes(model, batches[0], loss)
    room = budget_gb * 2**30 - (1 + count) * weights
    return int(max(1, min(limit, room // max(per_point, 1))))


def make_evaluator(
    model: nn.Module, names: list[str], theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
    batches: EvalBatches, precision: str = "fp32", logged: list[bool] | None = None, loss: Loss = CROSS_ENTROPY,
) -> PointsEvaluator | None:
    """A PointsEvaluator if this model runs under vmap and agrees with a plain call, else None (reason logged)."""
    try:
        ev = PointsEvaluator(model, names, theta, directions, batches, "fp32", logged, loss)
        probe = [take(batches[0], slice(0, 2))]  # checked on the evaluator itself: a second one would copy theta* again
        got = ev.evaluate(np.zeros((2, len(directions))), probe)["loss"]
        ev.precision = precision
        want = evaluate(model, probe, loss=loss)["loss"]
        if not np.allclose(got, want, rtol=1e-3, atol=1e-5):
            raise RuntimeError(f"vmap result {got} differs from a plain call {want}")
    except Exception as err:
        log.warning("vectorized points unavailable for %s (%s: %s); using the in-place K=1 path",
                    type(model).__name__, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
    return ev


class PointRunner:
    """Evaluates a list of grid points by the chosen path: K stacked points per vmap pass, or one by one in place."""

    def __init__(self, model: nn.Module, perturber: Perturber | OnAccessPerturber, batches: EvalBatches,
                 precision: str = "fp32", evaluator: PointsEvaluator | None = None, k: int = 1,
                 fast: nn.Module | None = None,
                 curvature: Callable[[], dict[str, float]] | None = None, loss: Loss = CROSS_ENTROPY,
                 coefficients: CoefficientMap | None = None) -> None:
        self.model, self.perturber, self.batches, self.precision = model, perturber, batches, precision
        self.coefficients = coefficients  # grid coordinates -> direction coefficients (Directions.coefficients)
        self.loss = loss
        self.evaluator = evaluator
        self.k = k if evaluator is not None else 1
        self.fast = fast  # the K = 1 path's model: engine.sweep.rewrite.FastModel (or a compiled model), else model
        self.curvature = curvature  # extra metrics at the live weights (engine.curvature.spectra.CurvatureProbe)

    def run(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        """{metric: [n]} at each of the n grid points of coords ([n, ndim]), curvature metrics included if asked;
        the coefficient map (if any) turns them into coefficients over the directions first."""
        coords = coefficients_at(self.coefficients, coords, len(self.perturber.directions))
        out = self._metrics(coords)
        if self.curvature is not None:
            for i, c in enumerate(coords):
                self.perturber.set(tuple(float(v) for v in c))
                for metric, value in self.curvature().items():
                    out.setdefault(metric, np.empty(len(coords)))[i] = value
        return out

    def _metrics(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        n = len(coords)
        out = {m: np.empty(n) for m in self.loss.metrics}
        if self.k == 1 or self.evaluator is None:
            point_model = self.fast if self.fast is not None else self.model
            set_point = getattr(point_model, "set_point", None)
            for i, c in enumerate(coords):
                point = tuple(float(v) for v in c)
                self.perturber.set(point)
                if set_point is not None:
                    set_point(point)
                for metric, value in evaluate(point_model, self.batches, self.precision, self.loss).items():
                    out[metric][i] = value
            return out
        for chunk in np.array_split(np.arange(n), -(-n // self.k)):
            for metric, values in self.evaluator.evaluate(coords[chunk]).items():
                out[metric][chunk] = values
        return out


K_GAIN = 0.05  # a larger K must be this much faster per point than the best so far to be taken


def choose_k(runner: PointRunner, coords: np.ndarray, k_max: int, budget_bytes: float | None = None) -> int:
    """The K with the least time per point on these coords: 1, then doubling up to k_max while it keeps helping and
    while the memory a pass takes, measured (resident bytes on a CPU, allocated on a GPU), stays within budget_bytes.
    A larger K is taken only when it is K_GAIN faster: a few timed points differ by that much from noise alone (an LM
    took K=2 on a 4% lead and then swept 9% slower than K=1), and a larger K holds more memory."""
    if runner.evaluator is None or k_max <= 1:
        return 1
    device = next(runner.model.parameters()).device
    best_k, best_t, k = 1, float("inf"), 1
    while k <= k_max:
        runner.k = k
        sample = coords[np.arange(max(2, k)) % len(coords)]
        before = current_bytes(device)
        reset_peak(device)
        runner.run(sample[: max(1, k)])  # warm-up (allocations, kernel choice)
        start = time.perf_counter()
        runner.run(sample)
        per_point = (time.perf_counter() - start) / len(sample)
        used = peak_bytes(device) - before
        log.info("K=%d: %.3f ms per point, %.2f GB above the weights", k, per_point * 1e3, used / 1e9)
        if budget_bytes is not None and k > 1 and used > budget_bytes:
            log.info("K=%d takes more than eval.memory_gb=%.2f: not used", k, budget_bytes / 2**30)
            break
        if per_point < best_t * (1 - K_GAIN):
            best_k, best_t = k, per_point
        elif per_point > 1.1 * best_t:
            break
        k = k * 2 if k * 2 <= k_max or k == k_max else k_max
    runner.k = best_k
    if best_k == 1:
        runner.evaluator = None  # its flat copies of theta* and the directions are not needed on the K = 1 path
        release_freed_memory()  # the evaluator sits in a reference cycle (its vmapped bound method)
    return best_k

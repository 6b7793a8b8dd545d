#!/usr/bin/env python
"""python benchmarks/bench_stderr.py [--points N] [--rounds R] [--threads T] [--k K]

What the standard errors cost: milliseconds per grid point of the default sweep's point evaluation (`landscape` with
no overrides: a ResNet-8 on the digits test split, filter-normalized random plane, the timed eval batch size and
points per pass, channels_last) with the cross-entropy that sums per-item squares (engine.sources.losses.CROSS_ENTROPY)
against the kernels before it (a verbatim copy below: no sums of squares), in one process on the same runner
settings, model, batches and grid points. The weights are the untrained initialization: a point's cost does not
depend on their values.

Both paths a sweep may take are timed: K = 1 in place on the rewritten model, and the K points per vmap pass that
rank 0 picks by timing (when it picks more than one; --k K times that K instead). Each round times both losses over
the same points, their order alternating from round to round; printed: the median ms per point of each, the ratio of
the medians and the median of the per-round ratios (with its quartiles). Loss and accuracy are checked equal bit for
bit at every point. On a busy machine whole-point times are noisy, so everything after the forward pass is also
timed alone (the loss's sums over every eval batch's logits, their accumulation, the host sync and the means and
standard errors; K copies of the logits stacked for the vmap path): its extra microseconds per point over the whole
point's time is the overhead with the noise of the forward pass taken out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn

from engine.config.check import to_run_config
from engine.config.files import CONF_DIR
from engine.config.schema import RunConfig, register_configs
from engine.core.dist import DistEnv
from engine.directions.vectors import perturbed, random_directions
from engine.sources.batches import device_batches
from engine.sources.data import load_data
from engine.sources.losses import CROSS_ENTROPY, CrossEntropy, Loss, Sums, evaluate, output_tensor
from engine.sources.models import build_model
from engine.sources.splits import Split, subsample
from engine.sources.structure import Batch
from engine.store.grid import make_levels
from engine.sweep.runner import choose_batch_size, make_runner
from engine.sweep.vectorized import PointRunner

_TRANSPOSED_FROM = 256


def old_summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """engine.sources.losses.summed_cross_entropy before standard errors (commit 94f46e6), verbatim."""
    logits = logits.float()
    if logits.dim() != 2 or len(y) < _TRANSPOSED_FROM:
        return F.cross_entropy(logits, y, reduction="none").sum(dtype=torch.float64)
    columns = logits.t().contiguous()
    top = columns.amax(0)
    margin = top - columns.gather(0, y.unsqueeze(0)).squeeze(0)
    return (columns - top).exp_().sum(0).log_().add_(margin).sum(dtype=torch.float64)


class OldCrossEntropy(CrossEntropy):
    """CrossEntropy before standard errors: loss and accuracy sums only, no per-item squares."""

    metrics = ("loss", "accuracy")

    def sums(self, out: Any, batch: Batch) -> Sums:
        logits, y = output_tensor(out), self.target(batch)
        return {"loss": old_summed_cross_entropy(logits, y), "accuracy": (logits.max(1).indices == y).sum(),
                "count": torch.tensor(len(y))}

    def stacked_sums(self, out: Any, batch: Batch, k: int) -> Sums:
        logits, y = output_tensor(out), self.target(batch)
        per = F.cross_entropy(logits.flatten(0, 1).float(), y.repeat(k), reduction="none")
        return {"loss": per.view(k, -1).sum(1, dtype=torch.float64), "accuracy": (logits.argmax(-1) == y).sum(1),
                "count": torch.full((k,), len(y))}


def default_config(**eval_settings: Any) -> RunConfig:
    """The config `landscape` runs with no overrides (progress bars off), eval settings replaced."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = to_run_config(compose("config", overrides=["eval.progress=false"]))[0]
    for key, value in eval_settings.items():
        setattr(cfg.eval, key, value)
    return cfg


def time_round(runners: dict[str, PointRunner], points: np.ndarray, order: list[str]) -> dict[str, float]:
    """ms per point of each runner over the same points, in the given order."""
    out = {}
    for name in order:
        start = time.perf_counter()
        runners[name].run(points)
        out[name] = (time.perf_counter() - start) * 1e3 / len(points)
    return out


def after_forward(loss: Loss, logits: list[torch.Tensor], batches: list[Batch], k: int) -> dict[str, Any]:
    """What a point's evaluation does after the forward passes, on given logits: evaluate's (K = 1) or
    PointsEvaluator.evaluate's (K stacked copies) sums, accumulation, host sync, means and standard errors."""
    if k == 1:
        return evaluate(nn.Identity(), [(z, y) for z, (_, y) in zip(logits, batches)], loss=loss)
    total: dict[str, torch.Tensor] = {}
    for z, batch in zip(logits, batches):
        for key, value in loss.stacked_sums(z, batch, k).items():
            total[key] = value if key not in total else total[key] + value
    return loss.means({key: value.cpu().numpy() for key, value in total.items()})


def after_forward_us(losses: dict[str, Loss], logits: list[torch.Tensor], batches: list[Batch], k: int,
                     repeats: int = 2000) -> dict[str, float]:
    """Median microseconds per point of after_forward for each loss, the losses interleaved repeat by repeat."""
    stacked = [z.unsqueeze(0).expand(k, *z.shape).contiguous() for z in logits] if k > 1 else logits
    times: dict[str, list[float]] = {name: [] for name in losses}
    with torch.inference_mode():
        for r in range(repeats):
            for name in list(losses)[:: 1 if r % 2 else -1]:
                start = time.perf_counter()
                after_forward(losses[name], stacked, batches, k)
                times[name].append((time.perf_counter() - start) * 1e6 / k)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=64, help="grid points per round (spread over the plane)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--k", type=int, default=None, help="vmap K to time besides K=1 (default: the timed pick)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = default_config()
    env = DistEnv(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    data = load_data(cfg.data)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(env.device).eval()
    split = subsample(data.test, cfg.eval.samples, cfg.data.seed)
    assert isinstance(split, Split) and isinstance(split.x, torch.Tensor)
    model = model.to(memory_format=torch.channels_last)  # eval.channels_last's default for image inputs
    split = Split(split.x.contiguous(memory_format=torch.channels_last), split.y)
    target = perturbed(model, cfg.direction.over)
    dirs = random_directions(target.theta, 2, cfg.direction.seed, cfg.direction.norm, cfg.direction.ignore,
                             target.logged)
    levels = make_levels(cfg.grid)
    batch_size = choose_batch_size(model, split, env.device, loss=CROSS_ENTROPY)
    batches = device_batches(split, batch_size, env.device)
    timed = make_runner(cfg, model, target.names, target.tensors, dirs, batches, env, levels[""], loss=CROSS_ENTROPY,
                        logged=target.logged)
    grid = np.stack(np.meshgrid(*levels[""].coords, indexing="ij"), -1).reshape(-1, 2)
    points = grid[np.unique(np.linspace(0, len(grid) - 1, args.points).round().astype(int))]
    print(f"default sweep: {cfg.model.name} on {len(split)} {cfg.data.name} {cfg.eval.split} samples, batch size "
          f"{batch_size}, K chosen {timed.k}, {len(points)} points of the {'x'.join(map(str, grid.shape[:1]))}-point "
          f"plane, {args.rounds} rounds, {torch.get_num_threads()} thread(s) on {env.device}")
    for k in sorted({1, args.k or timed.k}):
        fixed = default_config(points_per_pass=k, batch_size=batch_size)
        losses: dict[str, Loss] = {"with": CROSS_ENTROPY, "without": OldCrossEntropy()}
        runners = {name: make_runner(fixed, model, target.names, target.tensors, dirs, batches, env, None, loss=loss,
                                     logged=target.logged) for name, loss in losses.items()}
        with runners["with"].perturber.active():
            new, old = runners["with"].run(points), runners["without"].run(points)  # warm-up, and the check
            for metric in ("loss", "accuracy"):
                assert np.array_equal(new[metric], old[metric]), f"K={k}: {metric} differs from the old kernels'"
            rounds = [time_round(runners, points, ["with", "without"] if r % 2 else ["without", "with"])
                      for r in range(args.rounds)]
        med = {name: statistics.median(r[name] for r in rounds) for name in runners}
        ratios = sorted(r["with"] / r["without"] for r in rounds)
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        with torch.inference_mode():
            logits = [model(x) for x, _ in batches]
        kernels = after_forward_us(losses, logits, batches, k)
        extra = kernels["with"] - kernels["without"]
        path = "in place (rewritten)" if k == 1 else f"vmap, K={k}"
        print(f"{path}: {med['with']:.3f} ms/point with standard errors, {med['without']:.3f} without; overhead "
              f"{100 * (med['with'] / med['without'] - 1):+.2f}% (ratio of medians), per-round ratio median "
              f"{100 * (q2 - 1):+.2f}% [quartiles {100 * (q1 - 1):+.2f}%, {100 * (q3 - 1):+.2f}%]; loss and "
              f"accuracy equal bit for bit")
        print(f"  after the forward alone: {kernels['with']:.1f} us/point with, {kernels['without']:.1f} without: "
              f"{extra:+.1f} us/point = {100 * extra / (1e3 * med['without']):+.3f}% of a point")


if __name__ == "__main__":
    main()

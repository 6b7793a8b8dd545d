#!/usr/bin/env python
"""Run: python benchmarks/bench_loss.py [--repeats 200]

What the cancellation-free summed cross-entropy (engine.sources.losses.summed_cross_entropy) costs per grid point,
against the formula it replaced (lse.sum() - z_y.sum() in float32, which lost up to 3e-4 of a trained model's loss)
and plain F.cross_entropy, on the logits of the sweep benchmarks' workloads: the digits MLP (one [1797, 10] batch per
point) and ResNet-20 (one [256, 10] batch per point), both as [N, C] and as the [C, N] view the transposed head
returns. Times are medians of interleaved rounds in one run; the ratio is against the old formula.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from engine.sources.losses import summed_cross_entropy


def old_summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The replaced fast path (batch >= 256): two float32 sums of ~N log C subtracted."""
    logits = logits.float()
    columns = logits.t().contiguous()
    top = columns.amax(0)
    lse = (columns - top).exp_().sum(0).log_().add_(top)
    return lse.sum() - logits.gather(1, y.unsqueeze(1)).sum()


def plain(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def time_ms(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median ms of one call (each call ends in a host sync, as a point's loss does)."""
    fn().item()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn().item()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}; median ms per call over {args.repeats}")
    print(f"{'workload':<34}{'old (cancels)':>15}{'new':>10}{'F.cross_entropy':>17}{'new - old':>11}{'new/old':>9}")
    for name, n in (("MLP on digits, [1797, 10]", 1797), ("ResNet-20, [256, 10]", 256)):
        for layout in ("[N, C]", "[C, N] view"):
            z = torch.randn(n, 10, generator=gen) * 8
            y = torch.randint(0, 10, (n,), generator=gen)
            logits = z.t().contiguous().t() if layout == "[C, N] view" else z
            times: dict[str, list[float]] = {"old": [], "new": [], "plain": []}
            fns = {"old": old_summed_cross_entropy, "new": summed_cross_entropy, "plain": plain}
            for _ in range(3):  # interleaved rounds against the machine's drift
                for key, fn in fns.items():
                    times[key].append(time_ms(functools.partial(fn, logits, y), args.repeats))
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"{name + ' ' + layout:<34}{med['old']:>15.4f}{med['new']:>10.4f}{med['plain']:>17.4f}"
                  f"{med['new'] - med['old']:>11.4f}{med['new'] / med['old']:>8.2f}x")


if __name__ == "__main__":
    main()

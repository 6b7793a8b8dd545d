#!/usr/bin/env python
"""python benchmarks/bench_blocks.py [--workload mlp|resnet|all] [--repeats R] [--threads T]

What per-block curvature costs next to the full spectrum, on the same model, data and settings (HessianConfig's
defaults: top 5 eigenpairs by Lanczos stopped at rtol 1e-5 or 60 steps, 100 Hutchinson probes, 99 Hutch++
products, 5 SLQ runs of 60 steps; Hessian batches of 128, gradient graphs kept):

- full: engine.curvature.spectra.compute_spectrum with hessian.blocks=null (the spectrum a run computes);
- blocks=layer / blocks=module: engine.curvature.spectra.block_curvature alone, the extra work that
  hessian.blocks adds to a run: for each block, lambda_max and lambda_min by one Lanczos run (k=1, the same stop
  rule) and the trace (exact from n unit vectors when the block has at most 100 parameters, else 100 Hutchinson
  probes), each product restricted to the block's parameters;
- ggn: compute_spectrum with hessian.matrix=ggn (the same estimates on the generalized Gauss-Newton matrix).

Each row gives seconds (best of R rounds), Hessian-vector products (counted by the operators) and the ratio of
both to the full spectrum's. A block's product is not cheaper in proportion to its size: it still runs the whole
forward pass and a double backward down to the block's parameters; the products saved are those of the smaller
Krylov spaces (a block of n parameters needs at most n Lanczos steps and its trace at most n products).

On a machine busy with other CPU work, run with --threads 1 (the default here).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.curvature.blocks import parameter_blocks
from engine.curvature.hessian import LinearOperator
from engine.curvature.spectra import block_curvature, compute_spectrum
from engine.sources.data import synthetic_images
from engine.sources.losses import CROSS_ENTROPY
from engine.sources.models import MLP, CifarResNet

SEED = 0
MAIN = DistEnv(0, 1, 0, torch.device("cpu"))


@dataclass
class Workload:
    """A model (seeded, untrained, eval mode) and the Hessian's samples."""

    title: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]


def digits(samples: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` scikit-learn digits, flattened to 64 features in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images[:samples].reshape(samples, -1), dtype=torch.float32) / 16.0
    return x, torch.tensor(bunch.target[:samples], dtype=torch.long)


def seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(SEED)
        return factory().eval()

    return make


WORKLOADS = {
    "mlp": Workload("MLP 64-64-32-10 (ReLU, untrained, seed 0) on 512 digits", seeded(lambda: MLP(64, [64, 32], 10)),
                    digits),
    "resnet": Workload("CifarResNet(8, 10, 3, 8, shortcut=True), untrained, eval mode, on 128 synthetic 3x16x16 images",
                       seeded(lambda: CifarResNet(8, 10, 3, 8, shortcut=True)),
                       lambda: synthetic_images((3, 16, 16), 128, 10, SEED)),
}


def batches_of(x: torch.Tensor, y: torch.Tensor, size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def identity(op: LinearOperator) -> LinearOperator:
    return op


def timed(fn: Callable[[], int], repeats: int) -> tuple[float, int]:
    """(best seconds over repeats, products of the first round)."""
    best, products = float("inf"), -1
    for r in range(repeats):
        start = time.perf_counter()
        count = fn()
        best = min(best, time.perf_counter() - start)
        products = count if r == 0 else products
    return best, products


def run(name: str, workload: Workload, repeats: int) -> None:
    model = workload.make_model()
    params = [p for p in model.parameters() if p.requires_grad]
    batches = batches_of(*workload.make_data())
    print(f"\n{name}: {workload.title}; {sum(p.numel() for p in params)} parameters, {len(batches)} batches")

    def full(matrix: str = "hessian") -> Callable[[], int]:
        return lambda: compute_spectrum(model, params, batches, HessianConfig(matrix=matrix), MAIN).matvecs

    def blocks(kind: str) -> Callable[[], int]:
        cfg = HessianConfig(blocks=kind)
        groups = parameter_blocks(model, params, kind)

        def go() -> int:
            return block_curvature(model, groups, batches, cfg, MAIN, CROSS_ENTROPY, identity).matvecs

        return go

    rows: list[tuple[str, float, int]] = []
    base_s, base_hvps = timed(full(), repeats)
    rows.append(("full spectrum (blocks=null)", base_s, base_hvps))
    for kind in ("layer", "module"):
        count = len(parameter_blocks(model, params, kind))
        s, hvps = timed(blocks(kind), repeats)
        rows.append((f"blocks={kind} ({count} blocks)", s, hvps))
    s, hvps = timed(full("ggn"), repeats)
    rows.append(("full spectrum, matrix=ggn", s, hvps))
    print(f"{'':34s} {'seconds':>9s} {'products':>9s} {'s/product':>10s} {'x full (s)':>10s} "
          f"{'x full (products)':>17s}")
    for label, s, hvps in rows:
        print(f"{label:34s} {s:9.2f} {hvps:9d} {1e3 * s / hvps:8.2f}ms {s / base_s:10.2f} {hvps / base_hvps:17.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="per-block curvature vs the full spectrum: seconds and products")
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per row; the best time is printed")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats}")
    for name, workload in WORKLOADS.items():
        if args.workload in (name, "all"):
            run(name, workload, args.repeats)


if __name__ == "__main__":
    main()

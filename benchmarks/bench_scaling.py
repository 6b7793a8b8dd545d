#!/usr/bin/env python
"""Run: python benchmarks/bench_scaling.py [--ranks 2] [--resolution 24] [--tile 4] [--samples 359]

Scaling efficiency of the distributed sweep on CPU: throughput (grid points/s) of N gloo ranks with one
thread each over one rank with one thread, same workload, measured in one run. Each configuration sweeps
a fresh store with the engine's own claim loop (engine.sweep.tiles.sweep_tiles); the time is taken between two
barriers, so process start-up and store creation are not counted. Efficiency = (rate_N / rate_1) / N.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import zarr

from engine.config.schema import DataConfig, GridConfig, ModelConfig
from engine.core.dist import DistEnv
from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.batches import device_batches
from engine.sources.checkpoints import state_fingerprint
from engine.sources.data import load_data, subsample
from engine.sources.models import build_model
from engine.store.grid import make_levels
from engine.store.layout import StoreSpec, open_store
from engine.sweep.perturb import Perturber
from engine.sweep.tiles import sweep_tiles
from engine.sweep.vectorized import PointRunner


def worker(rank: int, world: int, tmp: str, args: argparse.Namespace, out: dict) -> None:
    """One rank: build the same model, directions and batches, sweep between two barriers, report seconds."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdzv", rank=rank, world_size=world)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    data = load_data(DataConfig())
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet8", width=args.width), data.input_shape, data.num_classes).eval()
    named = perturbed_tensors(model, "weights")
    tensors = [t for _, t in named]
    directions = random_directions([t.detach() for t in tensors], 2, 0, "filter", "biasbn")
    batches = device_batches(subsample(data.test, args.samples), args.batch, env.device)
    levels = make_levels(GridConfig(resolution=[args.resolution] * 2, tile=[args.tile] * 2, preview=0))
    store = Path(tmp) / "s.zarr"
    if rank == 0:
        spec = StoreSpec({"bench": world}, levels, [n for n, _ in named], [tuple(t.shape) for t in tensors],
                         directions, state_fingerprint(model))
        open_store(store, spec)
    dist.barrier()
    root = zarr.open_group(store, mode="r+")
    runner = PointRunner(model, Perturber(tensors, directions), batches)  # the in-place K = 1 path
    sweep_tiles(runner, levels, root, progress=False, env=env)  # warm-up
    dist.barrier()
    root["done"][...] = 0
    dist.barrier()
    start = time.perf_counter()
    mine = sweep_tiles(runner, levels, root, progress=False, env=env)
    dist.barrier()
    if rank == 0:
        out["seconds"] = time.perf_counter() - start
    out[f"tiles{rank}"] = len(mine)
    dist.destroy_process_group()


def measure(world: int, args: argparse.Namespace) -> tuple[float, list[int]]:
    """Seconds of one sweep on `world` ranks and the number of tiles each rank claimed."""
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(worker, args=(world, tmp, args, out), nprocs=world, join=True)
        return out["seconds"], [out[f"tiles{r}"] for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=24)
    parser.add_argument("--tile", type=int, default=4)
    parser.add_argument("--samples", type=int, default=359)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128, help="eval batch size")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    points = args.resolution**2
    print(f"workload: ResNet-8 (width {args.width}) on {args.samples} digits, {args.resolution}x{args.resolution} "
          f"grid in {args.tile}x{args.tile} tiles, 1 thread per rank, best of {args.repeats}")
    results = {}
    for _ in range(args.repeats):
        for world in (1, args.ranks):
            seconds, tiles = measure(world, args)
            if world not in results or seconds < results[world][0]:
                results[world] = (seconds, tiles)
    for world, (seconds, tiles) in results.items():
        print(f"{world} rank(s): {seconds:7.2f} s, {points / seconds:8.1f} points/s, tiles per rank {tiles}")
    rate1, rate_n = points / results[1][0], points / results[args.ranks][0]
    print(f"speed-up {rate_n / rate1:.2f}x on {args.ranks} ranks; scaling efficiency {rate_n / rate1 / args.ranks:.1%}")


if __name__ == "__main__":
    main()

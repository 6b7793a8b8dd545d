"""The worker loop: ranks claim pending tiles one at a time from a shared counter, set every point's weights
in place, evaluate, and write the tile (data first, then its done flag). Rank 0 shows the job's progress.

Run on every GPU of a node: torchrun --nproc_per_node=8 -m engine.sweep [hydra overrides]
"""

from __future__ import annotations

import itertools
import logging
import os
import time

import numpy as np
import zarr
from torch import nn
from tqdm import tqdm

from engine.dist import DistEnv, TileCounter
from engine.evaluate import METRICS, Batches, evaluate
from engine.grid import GridPlan
from engine.perturb import Perturber
from engine.store import pending_tiles, write_tile

log = logging.getLogger(__name__)
_SWEEPS = itertools.count()  # every rank sweeps in the same order, so the n-th sweep's counter keys agree

Work = tuple[str, tuple[int, ...]]


def sweep_tiles(
    model: nn.Module,
    batches: Batches,
    perturber: Perturber,
    levels: dict[str, GridPlan] | GridPlan,
    root: zarr.Group,
    progress: bool = True,
    env: DistEnv | None = None,
) -> list[Work]:
    """Compute every tile whose done flag is unset, coarse level first; returns the (level, tile)s this rank did.

    Every rank lists the same pending work (the done flags are read after a barrier); each then claims the
    next item from an atomic counter until none is left, so ranks never write the same chunk.
    """
    levels = {"": levels} if isinstance(levels, GridPlan) else levels
    env = env or DistEnv(0, 1, 0, next(model.parameters()).device)
    work = [(level, t) for level, plan in levels.items() for t in pending_tiles(root, plan, level)]
    sizes = [int(np.prod(levels[level].tile_shape(t))) for level, t in work]
    seq = next(_SWEEPS)
    claims, points = TileCounter(env, f"sweep{seq}/claims"), TileCounter(env, f"sweep{seq}/points")
    mine: list[Work] = []
    model.eval()
    log.info("rank %d of %d (pid %d): %d tile(s) pending", env.rank, env.world_size, os.getpid(), len(work))
    bar = tqdm(total=sum(sizes), disable=not (progress and env.is_main), unit="pt", desc="sweep")
    with perturber.active(), bar:
        while (k := claims.add(1) - 1) < len(work):
            level, tile = work[k]
            start = time.perf_counter()
            write_tile(root, levels[level], tile, _compute_tile(model, batches, perturber, levels[level], tile), level)
            mine.append((level, tile))
            total = points.add(sizes[k])
            log.info("rank %d: %s tile %s (%d points) in %.2f s", env.rank, level or "full", tile, sizes[k],
                     time.perf_counter() - start)
            bar.update(total - bar.n)
    return mine


def _compute_tile(
    model: nn.Module, batches: Batches, perturber: Perturber, plan: GridPlan, tile: tuple[int, ...]
) -> dict[str, np.ndarray]:
    values = {m: np.full(plan.tile_shape(tile), np.nan, dtype=np.float32) for m in METRICS}
    for idx, coords in plan.tile_points(tile):
        perturber.set(coords)
        for metric, value in evaluate(model, batches).items():
            values[metric][idx] = value
    return values


if __name__ == "__main__":
    from engine.cli import main

    main()

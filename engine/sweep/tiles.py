"""The worker loop: ranks claim pending tiles one at a time from a shared counter, evaluate every point of a
tile (K at a time under vmap, or in place), and write the tile (data first, then its done flag). Rank 0 shows
the job's progress.

Run on every GPU of a node: torchrun --nproc_per_node=8 -m engine.sweep [hydra overrides]
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import zarr

from engine.core.dist import DistEnv, barrier
from engine.core.progress import progress_bar
from engine.store.grid import GridPlan
from engine.store.tiles import Work, pending_work, write_tile
from engine.sweep.counter import TileCounter
from engine.sweep.vectorized import PointRunner

if TYPE_CHECKING:  # FSDP2's modules load only for sharded runs
    from engine.sweep.sharded import ShardGroup

log = logging.getLogger(__name__)
_SWEEPS = itertools.count()  # every rank sweeps in the same order, so the n-th sweep's counter keys agree

def sweep_tiles(
    runner: PointRunner,
    levels: dict[str, GridPlan] | GridPlan,
    root: zarr.Group,
    progress: bool = True,
    env: DistEnv | None = None,
    group: ShardGroup | None = None,
) -> list[Work]:
    """Compute every tile whose done flag is unset, coarse level first; returns the (level, tile)s this rank did.

    Every rank lists the same pending work (the done flags are read after a barrier); each then claims the
    next item from an atomic counter until none is left, so ranks never write the same chunk. With a shard group
    (parallel.shard), its leader claims for the group, every rank of it computes the tile, the leader writes it.
    """
    levels = {"": levels} if isinstance(levels, GridPlan) else levels
    env = env or DistEnv(0, 1, 0, next(runner.model.parameters()).device)
    work = pending_work(levels, root)
    barrier()  # every rank has read the done flags before any rank writes one: the work lists must agree
    sizes = [int(np.prod(levels[level].tile_shape(t))) for level, t in work]
    seq = next(_SWEEPS)
    claims, points = TileCounter(env, f"sweep{seq}/claims"), TileCounter(env, f"sweep{seq}/points")
    mine: list[Work] = []
    arrays: dict[str, zarr.Array | None] = {}  # opened once for the whole sweep
    log.info("rank %d of %d (pid %d): %d tile(s) pending, K=%d", env.rank, env.world_size, os.getpid(), len(work),
             runner.k)
    desc = "sweep" if runner.curvature is None else "sweep+curvature"  # the curvature probe runs at every point
    bar = progress_bar(sum(sizes), desc, "pt", progress and env.is_main)
    # a tile is written on a writer thread while the next one is computed; at most one write is in flight, and
    # its error (if any) is raised before the next tile is handed over and before the sweep returns
    with runner.perturber.active(), bar, ThreadPoolExecutor(1, thread_name_prefix="tile-writer") as writer:
        writing: Future | None = None
        try:
            while (k := claim(claims, group)) < len(work):
                level, tile = work[k]
                start = time.perf_counter()
                values = compute_tile(runner, levels[level], tile)
                if writing is not None:
                    writing.result()
                mine.append((level, tile))
                if group is not None and not group.leader:
                    continue
                writing = writer.submit(write_tile, root, levels[level], tile, values, level, arrays)
                total = points.add(sizes[k])
                log.info("rank %d: %s tile %s (%d points) in %.2f s", env.rank, level or "full", tile, sizes[k],
                         time.perf_counter() - start)
                bar.update(total - bar.n)
        finally:
            if writing is not None:
                writing.result()
    return mine


def claim(claims: TileCounter, group: ShardGroup | None) -> int:
    """The index of the next work item this rank computes: its own claim, or its shard group leader's."""
    if group is None:
        return claims.add(1) - 1
    return group.broadcast(claims.add(1) - 1 if group.leader else -1)


def compute_tile(runner: PointRunner, plan: GridPlan, tile: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every metric at every point of one tile, as arrays of the tile's shape."""
    results = runner.run(np.array([c for _, c in plan.tile_points(tile)]))
    return {m: v.astype(np.float32).reshape(plan.tile_shape(tile)) for m, v in results.items()}


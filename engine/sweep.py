"""The worker loop: for each pending tile, set every point's weights in place, evaluate, write the tile."""

from __future__ import annotations

import numpy as np
import zarr
from torch import nn
from tqdm import tqdm

from engine.evaluate import METRICS, Batches, evaluate
from engine.grid import GridPlan
from engine.perturb import Perturber
from engine.store import pending_tiles, write_tile


def sweep_tiles(
    model: nn.Module,
    batches: Batches,
    perturber: Perturber,
    plan: GridPlan,
    root: zarr.Group,
    progress: bool = True,
) -> list[tuple[int, ...]]:
    """Compute every tile whose done flag is unset (resume for free); returns the tiles computed."""
    tiles = pending_tiles(root, plan)
    total = sum(int(np.prod(plan.tile_shape(t))) for t in tiles)
    model.eval()
    with perturber.active(), tqdm(total=total, disable=not progress, unit="pt", desc="sweep") as bar:
        for tile in tiles:
            values = {m: np.full(plan.tile_shape(tile), np.nan, dtype=np.float32) for m in METRICS}
            for idx, coords in plan.tile_points(tile):
                perturber.set(coords)
                for metric, value in evaluate(model, batches).items():
                    values[metric][idx] = value
                bar.update(1)
            write_tile(root, plan, tile, values)
    return tiles

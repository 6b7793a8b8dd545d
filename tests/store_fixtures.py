"""Stores with known values, made without a sweep (engine.store.layout + write_tile), for the readers of a store:
the VTK export and landscape-plot / landscape-export's refusals.

Imported as `from store_fixtures import ...` (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.config.schema import GridConfig
from engine.store.grid import PREVIEW, make_levels
from engine.store.layout import StoreSpec, open_store
from engine.store.tiles import write_tile

SHAPES = [(3, 2), (4,)]
CURVATURE = ("hessian/lambda_max", "hessian/lambda_min", "hessian/ratio")


def values(metric: str, x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """A different known float32 array per metric, arr[i(, j)] = f(x[i](, y[j])), asymmetric in x and y; the loss
    has a NaN, a +inf and a zero in it (2D)."""
    xx, yy = np.meshgrid(x, y if y is not None else [0.0], indexing="ij")
    scale = 1.0 + sum(map(ord, metric)) % 7
    out = (scale * (1 + xx**2 + 2 * (yy - 0.3) ** 2) + 0.1 * xx).astype(np.float32)
    out = out if y is not None else out[:, 0]
    if metric == "loss" and y is not None:
        out[0, -1], out[-1, 0], out[1, 1] = np.nan, np.inf, 0.0
    return out


def make_store(path: Path, resolution: list[int], *, metrics: tuple[str, ...] = ("loss", "accuracy"),
               preview: int = 0, trajectory: np.ndarray | None = None, full_done: bool = True,
               preview_done: bool = True) -> Path:
    """A store of `resolution` on x in [-1, 1], y in [-0.5, 1.5] filled with `values`, tile by tile (the full grid's
    tiles only when full_done, the last one left out otherwise; the preview's only when preview_done)."""
    grid = GridConfig(resolution=resolution, x=[-1.0, 1.0], y=[-0.5, 1.5], tile=[3, 3], preview=preview)
    levels = make_levels(grid)
    g = torch.Generator().manual_seed(0)
    dirs = [[torch.randn(s, generator=g) for s in SHAPES] for _ in resolution]
    spec = StoreSpec({"model": {"name": "mlp"}, "data": {"name": "synthetic"}, "direction": {"norm": "filter"},
                      "grid": {"resolution": resolution}}, levels, ["w", "b"], SHAPES, dirs, "f00d", metrics,
                     attrs={"markers": {"theta*": [0.0] * len(resolution)}},
                     arrays={} if trajectory is None else {"trajectory/coords": trajectory})
    root = open_store(path, spec)
    for level, plan in levels.items():
        full = {m: values(m, *plan.coords) for m in metrics}
        tiles = plan.tiles()
        if level == PREVIEW and not preview_done:
            tiles = []
        elif level == "" and not full_done:
            tiles = tiles[:-1]
        for tile in tiles:
            write_tile(root, plan, tile, {m: a[plan.tile_slices(tile)] for m, a in full.items()}, level)
    return path

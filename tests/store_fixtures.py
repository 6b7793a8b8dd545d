"""Stores with known values, made without a sweep (engine.store.layout + write_tile), for the readers of a store:
the VTK export and landscape-plot / landscape-export's refusals.

Imported as `from store_fixtures import ...` (tests/ is on pytest's pythonpath).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

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


def make_spec(resolution: list[int], *, metrics: tuple[str, ...] = ("loss", "accuracy"), preview: int = 0,
              trajectory: np.ndarray | None = None) -> StoreSpec:
    """The spec of a store of `resolution` on x in [-1, 1], y in [-0.5, 1.5], tiles of 3x3, seeded directions."""
    grid = GridConfig(resolution=resolution, x=[-1.0, 1.0], y=[-0.5, 1.5], tile=[3, 3], preview=preview)
    g = torch.Generator().manual_seed(0)
    dirs = [[torch.randn(s, generator=g) for s in SHAPES] for _ in resolution]
    return StoreSpec({"model": {"name": "mlp"}, "data": {"name": "synthetic"}, "direction": {"norm": "filter"},
                      "grid": {"resolution": resolution}}, make_levels(grid), ["w", "b"], SHAPES, dirs, "f00d",
                     metrics, attrs={"markers": {"theta*": [0.0] * len(resolution)}},
                     arrays={} if trajectory is None else {"trajectory/coords": trajectory})


def fill_tiles(root: zarr.Group, spec: StoreSpec, full_done: bool = True, preview_done: bool = True) -> None:
    """Write every tile of every level with `values` (the full grid's last tile left out unless full_done, the
    preview's tiles unless preview_done)."""
    for level, plan in spec.levels.items():
        full = {m: values(m, *plan.coords) for m in spec.metrics}
        tiles = plan.tiles()
        if level == PREVIEW and not preview_done:
            tiles = []
        elif level == "" and not full_done:
            tiles = tiles[:-1]
        for tile in tiles:
            write_tile(root, plan, tile, {m: a[plan.tile_slices(tile)] for m, a in full.items()}, level)


def make_store(path: Path, resolution: list[int], *, metrics: tuple[str, ...] = ("loss", "accuracy"),
               preview: int = 0, trajectory: np.ndarray | None = None, full_done: bool = True,
               preview_done: bool = True) -> Path:
    """A store of make_spec filled with `values`, tile by tile (fill_tiles)."""
    spec = make_spec(resolution, metrics=metrics, preview=preview, trajectory=trajectory)
    fill_tiles(open_store(path, spec), spec, full_done, preview_done)
    return path


def damage(file: Path, how: str) -> None:
    """What a node dying mid-write leaves: half the file ("truncated"), an empty file ("emptied"), or no file."""
    if how == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    elif how == "emptied":
        file.write_bytes(b"")
    else:
        file.unlink()

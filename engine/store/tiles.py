"""Tiles in the store: which are still pending (done flag unset) and how one is written (data first, then its flag)."""

from __future__ import annotations

import asyncio
from typing import cast

import numpy as np
import zarr
from zarr.core.sync import sync

from engine.sources.losses import is_stderr
from engine.store.grid import GridPlan
from engine.store.layout import DENSE_WRITES, level_group

Work = tuple[str, tuple[int, ...]]  # (level, tile index): '' is the full grid, 'preview' the coarse lattice


def pending_tiles(root: zarr.Group, plan: GridPlan, level: str = "") -> list[tuple[int, ...]]:
    """Tiles of a level whose done flag is unset, in the plan's (coarse-to-fine) order."""
    done = np.asarray(cast(zarr.Array, level_group(root, level)["done"])[...])
    return [t for t in plan.tiles() if not done[t]]


def write_tile(
    root: zarr.Group, plan: GridPlan, tile: tuple[int, ...], values: dict[str, np.ndarray], level: str = "",
    arrays: dict[str, zarr.Array | None] | None = None,
) -> None:
    """Write one tile's metric chunks, then (only then) its done flag. A store made before standard errors were
    stored has no `<metric>_stderr` arrays: a resumed sweep leaves them out there rather than half-filling new ones.
    `arrays` keeps the arrays opened across the tiles of a sweep (opening one reads its metadata, about a
    millisecond, six times a tile)."""
    group, sl = level_group(root, level), plan.tile_slices(tile)
    arrays = {} if arrays is None else arrays

    def array(name: str) -> zarr.Array | None:
        key = f"{level}/{name}"
        if key not in arrays:
            with zarr.config.set(DENSE_WRITES):  # opened to write every chunk, an all-NaN one too (integrity.py)
                arrays[key] = None if is_stderr(name) and name not in group else cast(zarr.Array, group[name])
        return arrays[key]

    writes = [(target, data) for metric, data in values.items() if (target := array(metric)) is not None]
    sync(_set_all(writes, sl))  # the metrics' chunks concurrently, in one round trip to zarr's I/O loop
    cast(zarr.Array, array("done"))[tuple(slice(i, i + 1) for i in tile)] = 1


async def _set_all(writes: list[tuple[zarr.Array, np.ndarray]], sl: tuple[slice, ...]) -> None:
    await asyncio.gather(*(target.async_array.setitem(sl, data) for target, data in writes))


def pending_work(levels: dict[str, GridPlan], root: zarr.Group) -> list[Work]:
    """Every (level, tile) whose done flag is unset, coarse level first, each level coarse to fine."""
    return [(level, t) for level, plan in levels.items() for t in pending_tiles(root, plan, level)]

"""The grid plan: coordinates along each axis, the tiles (= Zarr chunks) the grid is cut into, their order.

Work is done coarse to fine: first a preview lattice (every `preview`-th point of each axis, its own
tiles), then the full grid, each level's tiles in midpoint-subdivision order. A run stopped part way
thus already has a complete coarse plane, and the full plane fills in evenly.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config.schema import AUTO, GridConfig

AXES = ("x", "y")
LINES_AXES = ("direction", "x")  # N random lines: the line's index by the distance along it
PREVIEW = "preview"


@dataclass(frozen=True)
class GridPlan:
    """Coordinates per axis and the tile shape; tiles are indexed by their position in the tile grid."""

    coords: tuple[np.ndarray, ...]
    tile: tuple[int, ...]
    names: tuple[str, ...] = ()  # the axes' names when not x, y (N lines: LINES_AXES)

    @property
    def ndim(self) -> int:
        return len(self.coords)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def tile_grid(self) -> tuple[int, ...]:
        """Number of tiles along each axis."""
        return tuple(-(-n // t) for n, t in zip(self.shape, self.tile))

    @property
    def dims(self) -> tuple[str, ...]:
        return self.names or AXES[: self.ndim]

    def tiles(self) -> list[tuple[int, ...]]:
        """Every tile index, coarse to fine: a tile at a shallower subdivision level of any axis comes first."""
        orders = [midpoint_order(n) for n in self.tile_grid]
        depth = [dict(zip(o, range(len(o)))) for o in orders]
        return sorted(itertools.product(*(range(n) for n in self.tile_grid)),
                      key=lambda t: (max(d[i] for d, i in zip(depth, t)), [d[i] for d, i in zip(depth, t)]))

    def tile_slices(self, tile: tuple[int, ...]) -> tuple[slice, ...]:
        """The grid slices a tile covers (the last tile along an axis may be short)."""
        return tuple(slice(i * t, min((i + 1) * t, n)) for i, t, n in zip(tile, self.tile, self.shape))

    def tile_points(self, tile: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        """(index within the tile, coordinates) of every point of a tile, row-major."""
        slices = self.tile_slices(tile)
        return [
            (tuple(i - s.start for i, s in zip(idx, slices)), tuple(float(c[i]) for c, i in zip(self.coords, idx)))
            for idx in itertools.product(*(range(s.start, s.stop) for s in slices))
        ]

    def tile_shape(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.tile_slices(tile))

    def points(self) -> int:
        return int(np.prod(self.shape))


def midpoint_order(n: int) -> list[int]:
    """0..n-1 ordered coarse to fine: both ends, then recursive midpoints (breadth first)."""
    if n <= 2:
        return list(range(n))
    order, seen, spans = [0, n - 1], {0, n - 1}, [(0, n - 1)]
    while spans:
        nxt = []
        for lo, hi in spans:
            mid = (lo + hi) // 2
            if mid not in seen:
                order.append(mid)
                seen.add(mid)
            nxt += [(a, b) for a, b in ((lo, mid), (mid, hi)) if b - a > 1]
        spans = nxt
    return order


def make_plan(cfg: GridConfig, lines: int = 1) -> GridPlan:
    """Evenly spaced coordinates from min to max inclusive along each axis (the midpoint for 1 point); `lines` > 1
    random lines of a 1D grid make a (direction index, x) grid whose tiles each cover part of one line."""
    ndim = len(cfg.resolution)
    ranges = (cfg.x, cfg.y)[:ndim]
    if AUTO in ranges:
        raise ValueError("grid.x/grid.y=auto: resolve the range first (engine.sweep.autorange.resolve_grid)")
    coords = tuple(
        np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2]) for (lo, hi), n in zip(ranges, cfg.resolution)
    )
    tile = tuple(min(t, n) for t, n in zip(cfg.tile[:ndim], cfg.resolution))
    if lines > 1:
        return GridPlan((np.arange(lines, dtype=np.float64), *coords), (1, *tile), LINES_AXES)
    return GridPlan(coords, tile)


def make_levels(cfg: GridConfig, lines: int = 1) -> dict[str, GridPlan]:
    """The levels to sweep, coarse first: {'preview': every cfg.preview-th point, '': the full grid}.

    The preview is left out when it is off or would not be smaller than a quarter of the grid per axis.
    """
    full = make_plan(cfg, lines)
    s = cfg.preview
    if s < 2 or any(n < 4 * s for n in full.shape):
        return {"": full}
    coords = tuple(c[::s] for c in full.coords)
    tile = tuple(min(t, len(c)) for t, c in zip(full.tile, coords))
    return {PREVIEW: GridPlan(coords, tile, full.names), "": full}


def shape_only(cfg: GridConfig) -> GridConfig:
    """The grid with an auto range replaced by [-1, 1]: for what needs only its shape (planning, timing)."""
    ranges: dict[str, Any] = {a: [-1.0, 1.0] for a in "xy" if getattr(cfg, a) == AUTO}
    return dataclasses.replace(cfg, **ranges)

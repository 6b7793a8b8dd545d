"""The grid plan: coordinates along each axis and the tiles (= Zarr chunks) the grid is cut into."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from engine.config import GridConfig

AXES = ("x", "y")


@dataclass(frozen=True)
class GridPlan:
    """Coordinates per axis and the tile shape; tiles are indexed by their position in the tile grid."""

    coords: tuple[np.ndarray, ...]
    tile: tuple[int, ...]

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
        return AXES[: self.ndim]

    def tiles(self) -> list[tuple[int, ...]]:
        """Every tile index, in row-major order."""
        return list(itertools.product(*(range(n) for n in self.tile_grid)))

    def tile_slices(self, tile: tuple[int, ...]) -> tuple[slice, ...]:
        """The grid slices a tile covers (the last tile along an axis may be short)."""
        return tuple(slice(i * t, min((i + 1) * t, n)) for i, t, n in zip(tile, self.tile, self.shape))

    def tile_points(self, tile: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
        """(index within the tile, coordinates) of every point of a tile, row-major."""
        ranges = [range(s.start, s.stop) for s in self.tile_slices(tile)]
        starts = [s.start for s in self.tile_slices(tile)]
        return [
            (tuple(i - s for i, s in zip(idx, starts)), tuple(float(c[i]) for c, i in zip(self.coords, idx)))
            for idx in itertools.product(*ranges)
        ]

    def tile_shape(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.tile_slices(tile))


def make_plan(cfg: GridConfig) -> GridPlan:
    """Evenly spaced coordinates from min to max inclusive along each axis (the midpoint for 1 point)."""
    ndim = len(cfg.resolution)
    ranges = (cfg.x, cfg.y)[:ndim]
    coords = tuple(
        np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2]) for (lo, hi), n in zip(ranges, cfg.resolution)
    )
    tile = tuple(min(t, n) for t, n in zip(cfg.tile[:ndim], cfg.resolution))
    return GridPlan(coords, tile)

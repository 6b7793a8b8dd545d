"""engine.store.grid: the grid plan (coordinates, tiles covering every point once, coarse-to-fine tile order) and the
preview level, in 1D and 2D, at the ragged edge."""

from __future__ import annotations

import numpy as np
import pytest

from engine.store.grid import make_plan
from helpers import make_cfg


@pytest.mark.parametrize(
    ("resolution", "tile", "tile_grid"),
    [([7], [3], (3,)), ([6], [6], (1,)), ([5, 8], [2, 3], (3, 3)), ([4, 4], [4, 4], (1, 1)), ([1, 3], [2, 2], (1, 2))],
)
def test_plan_shapes_and_coordinates(resolution, tile, tile_grid, tmp_path):
    cfg, _ = make_cfg(tmp_path, f"grid.resolution={resolution}", f"grid.tile={tile}", "grid.x=[-2,1]", "grid.y=[0,3]")
    plan = make_plan(cfg.grid)
    assert plan.shape == tuple(resolution) and plan.tile_grid == tile_grid
    expected_x = np.linspace(-2, 1, resolution[0]) if resolution[0] > 1 else np.array([-0.5])
    np.testing.assert_allclose(plan.coords[0], expected_x)
    covered = np.zeros(plan.shape, dtype=int)
    for t in plan.tiles():
        covered[plan.tile_slices(t)] += 1
        assert len(plan.tile_points(t)) == np.prod(plan.tile_shape(t))
    assert (covered == 1).all()

"""engine.store.grid: the grid plan (coordinates, tiles covering every point once, coarse-to-fine tile order) and the
preview level, in 1D and 2D, at the ragged edge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.config.schema import GridConfig
from engine.store.grid import PREVIEW, GridPlan, make_levels, make_plan, midpoint_order
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


def plan_of(resolution: list[int], tile: list[int], **kw) -> GridPlan:
    return make_plan(GridConfig(resolution=resolution, tile=tile, **kw))


def test_midpoint_order_is_a_permutation_ends_first_then_midpoints():
    for n in range(12):
        order = midpoint_order(n)
        assert sorted(order) == list(range(n)), n
        if n > 2:
            assert order[:3] == [0, n - 1, (n - 1) // 2], n
    assert midpoint_order(9) == [0, 8, 4, 2, 6, 1, 3, 5, 7]  # breadth first: halves, then quarters, then the rest


def test_coordinates_inclusive_evenly_spaced_and_tile_clipped_to_the_grid():
    plan = plan_of([5, 3], [14, 14], x=[-2.0, 2.0], y=[0.5, 1.5])
    np.testing.assert_array_equal(plan.coords[0], [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(plan.coords[1], [0.5, 1.0, 1.5])
    assert plan.tile == (5, 3) and plan.tile_grid == (1, 1)  # a tile larger than the grid is the grid
    assert (plan.ndim, plan.dims, plan.shape, plan.points()) == (2, ("x", "y"), (5, 3), 15)
    line = plan_of([4], [3], x=[0.0, 3.0])
    assert (line.ndim, line.dims, line.shape, line.tile_grid) == (1, ("x",), (4,), (2,))
    np.testing.assert_array_equal(line.coords[0], [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize(("resolution", "tile"), [([7, 5], [3, 2]), ([9], [2]), ([10, 1], [4, 3]), ([2, 9], [5, 4])])
def test_tiles_cover_every_point_exactly_once_with_their_coordinates(resolution, tile):
    plan = plan_of(resolution, tile, x=[-1.0, 1.0], y=[0.0, 2.0])
    tiles = plan.tiles()
    assert sorted(tiles) == sorted(itertools.product(*(range(n) for n in plan.tile_grid)))  # each tile once
    seen: dict[tuple[int, ...], tuple[float, ...]] = {}
    for t in tiles:
        slices = plan.tile_slices(t)
        assert plan.tile_shape(t) == tuple(s.stop - s.start for s in slices)
        points = plan.tile_points(t)
        assert len(points) == int(np.prod(plan.tile_shape(t)))
        for local, coords in points:
            index = tuple(s.start + i for s, i in zip(slices, local))
            assert all(0 <= i < s for i, s in zip(local, plan.tile_shape(t)))
            assert index not in seen
            seen[index] = coords
            assert coords == tuple(float(c[i]) for c, i in zip(plan.coords, index))
    assert len(seen) == plan.points()  # every grid point, once


def test_ragged_edge_tiles_are_short():
    plan = plan_of([7, 5], [3, 2])  # 3 + 3 + 1 along x, 2 + 2 + 1 along y
    assert plan.tile_grid == (3, 3)
    assert plan.tile_shape((0, 0)) == (3, 2) and plan.tile_shape((2, 1)) == (1, 2) and plan.tile_shape((2, 2)) == (1, 1)
    assert plan.tile_slices((2, 2)) == (slice(6, 7), slice(4, 5))
    assert plan.tile_points((2, 2)) == [((0, 0), (float(plan.coords[0][6]), float(plan.coords[1][4])))]
    assert [c for _, c in plan.tile_points((1, 2))] == [(float(plan.coords[0][i]), float(plan.coords[1][4]))
                                                       for i in (3, 4, 5)]  # row-major, short along y


def test_tile_order_is_coarse_to_fine():
    assert plan_of([9], [2]).tiles() == [(0,), (4,), (2,), (1,), (3,)]  # the midpoint order of the 5 tiles
    plane = plan_of([7, 5], [3, 2])
    assert plane.tiles() == [(0, 0), (0, 2), (2, 0), (2, 2),  # the corners first
                             (0, 1), (2, 1), (1, 0), (1, 2), (1, 1)]  # then the edges' midpoints, the center last
    big = plan_of([40, 24], [4, 4])
    depth = [{i: k for k, i in enumerate(midpoint_order(n))} for n in big.tile_grid]
    levels = [max(d[i] for d, i in zip(depth, t)) for t in big.tiles()]
    assert levels == sorted(levels)  # never a finer subdivision level before a coarser one


@pytest.mark.parametrize("preview", [0, 1])
def test_no_preview_level_when_off(preview):
    levels = make_levels(GridConfig(resolution=[9, 8], tile=[3, 3], preview=preview))
    assert list(levels) == [""]


def test_preview_level_every_preview_th_point_swept_first():
    levels = make_levels(GridConfig(resolution=[9, 8], tile=[3, 3], preview=2, x=[-1.0, 1.0], y=[0.0, 7.0]))
    assert list(levels) == [PREVIEW, ""]  # the coarse level first
    full, coarse = levels[""], levels[PREVIEW]
    assert full.shape == (9, 8) and coarse.shape == (5, 4) and coarse.tile == (3, 3) and coarse.tile_grid == (2, 2)
    for c, f in zip(coarse.coords, full.coords):
        np.testing.assert_array_equal(c, f[::2])
    line = make_levels(GridConfig(resolution=[16], tile=[6], preview=4))
    assert list(line) == [PREVIEW, ""] and line[PREVIEW].shape == (4,) and line[PREVIEW].tile == (4,)
    np.testing.assert_array_equal(line[PREVIEW].coords[0], line[""].coords[0][::4])


def test_preview_left_out_unless_every_axis_has_four_strides():
    assert PREVIEW in make_levels(GridConfig(resolution=[8, 8], tile=[3, 3], preview=2))  # 8 = 4 * 2: kept
    assert list(make_levels(GridConfig(resolution=[8, 7], tile=[3, 3], preview=2))) == [""]  # 7 < 8 along y
    assert list(make_levels(GridConfig(resolution=[11], tile=[3], preview=3))) == [""]  # 11 < 12

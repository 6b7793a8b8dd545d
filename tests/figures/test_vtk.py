"""engine.figures.vtk on stores with known values, read back with VTK's own XML readers: every point-data array equals
the store's (NaN where NaN, in VTK's x-fastest point order), points at the store's coordinates with the loss (or its
log10) as height, non-square grids, the coarse preview of a partial store, a 1D line, a trajectory polyline on the
surface; metric selection and the one-line refusals that write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOXML import vtkXMLStructuredGridReader, vtkXMLUnstructuredGridReader

from engine.core.errors import UserError
from engine.figures.vtk import export_vtk, height, surface_at
from engine.store.read import read_surface
from store_fixtures import CURVATURE, make_store, values

TRAJECTORY = np.array([[-1.4, 1.2], [-0.55, 0.7], [-0.2, 0.1], [0.0, 0.0]])  # the first point outside the grid


def read_grid(path: Path):
    """The structured grid in a .vts file: (points [n, 3], {name: point data}, dimensions)."""
    reader = vtkXMLStructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    grid = reader.GetOutput()
    data = grid.GetPointData()
    arrays = {data.GetArrayName(k): vtk_to_numpy(data.GetArray(k)) for k in range(data.GetNumberOfArrays())}
    extent = grid.GetExtent()
    dims = tuple(extent[2 * k + 1] - extent[2 * k] + 1 for k in range(3))
    return vtk_to_numpy(grid.GetPoints().GetData()), arrays, dims


def as_points(arr: np.ndarray) -> np.ndarray:
    """A store array arr[i(, j)] in VTK's point order (x fastest)."""
    return np.asarray(arr).ravel(order="F")


def assert_point_data(arrays: dict[str, np.ndarray], store: Path, names: list[str]) -> None:
    surface = read_surface(store)
    assert set(arrays) == {n.replace("/", "_") for n in names}
    for name in names:
        np.testing.assert_array_equal(arrays[name.replace("/", "_")], as_points(surface.metrics[name]), err_msg=name)


def test_non_square_plane_reads_back_every_metric_at_the_store_coordinates(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [7, 4], metrics=("loss", "accuracy", *CURVATURE))
    files = export_vtk(store, tmp_path / "vtk")
    assert files == [tmp_path / "vtk" / "surface.vts"]
    points, arrays, dims = read_grid(files[0])
    assert dims == (7, 4, 1)
    assert_point_data(arrays, store, ["loss", "accuracy", *CURVATURE])
    x, y = np.linspace(-1, 1, 7), np.linspace(-0.5, 1.5, 4)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    np.testing.assert_allclose(points[:, 0], as_points(xx))
    np.testing.assert_allclose(points[:, 1], as_points(yy))
    loss = values("loss", x, y).astype(float)
    finite_max = loss[np.isfinite(loss)].max()
    expected = np.where(np.isposinf(loss), finite_max, loss)  # NaN stays NaN, +inf at the largest finite loss
    np.testing.assert_allclose(points[:, 2], as_points(expected), rtol=1e-6)
    assert np.isnan(points[:, 2]).sum() == 1 and np.isnan(arrays["loss"]).sum() == 1


def test_log_height_is_log10_of_the_loss_and_point_data_stay_raw(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [5, 6])
    points, arrays, _ = read_grid(export_vtk(store, tmp_path / "vtk", log=True)[0])
    loss = values("loss", np.linspace(-1, 1, 5), np.linspace(-0.5, 1.5, 6)).astype(float)
    finite = loss[np.isfinite(loss)]
    floor = finite[finite > 0].min()  # the zero is drawn at the smallest positive loss, as the figures do
    expected = np.log10(np.maximum(np.where(np.isposinf(loss), finite.max(), loss), floor))
    np.testing.assert_allclose(points[:, 2], as_points(expected), rtol=1e-6)
    assert_point_data(arrays, store, ["loss", "accuracy"])


def test_height_keeps_nan_and_caps_inf() -> None:
    z = height(np.array([np.nan, np.inf, -np.inf, 2.0, 10.0], np.float32))
    np.testing.assert_array_equal(z, [np.nan, 10.0, np.nan, 2.0, 10.0])
    np.testing.assert_array_equal(height(np.array([np.inf, np.nan])), [np.nan, np.nan])
    np.testing.assert_allclose(height(np.array([0.0, 10.0, 100.0]), log=True), [1.0, 1.0, 2.0])


def test_partial_store_exports_its_complete_coarse_preview(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [9, 8], preview=2, full_done=False)
    points, arrays, dims = read_grid(export_vtk(store, tmp_path / "vtk")[0])
    preview = read_surface(store, "preview")
    assert dims == (5, 4, 1) and preview.done.all()
    np.testing.assert_array_equal(arrays["loss"], as_points(preview.metrics["loss"]))
    np.testing.assert_allclose(points[:, 0], as_points(np.meshgrid(*preview.coords, indexing="ij")[0]))


def test_line_store_is_a_one_row_grid_with_the_loss_as_height(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [7], metrics=("loss", "accuracy", "perplexity"))
    files = export_vtk(store, tmp_path / "vtk")
    assert files == [tmp_path / "vtk" / "line.vts"]
    points, arrays, dims = read_grid(files[0])
    x = np.linspace(-1, 1, 7)
    assert dims == (7, 1, 1)
    assert_point_data(arrays, store, ["loss", "accuracy", "perplexity"])
    np.testing.assert_allclose(points, np.stack([x, values("loss", x), np.zeros(7)], axis=1), rtol=1e-6)


def test_trajectory_is_a_polyline_on_the_surface(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [7, 5], trajectory=TRAJECTORY)
    files = export_vtk(store, tmp_path / "vtk")
    assert [f.name for f in files] == ["surface.vts", "trajectory.vtu"]
    reader = vtkXMLUnstructuredGridReader()
    reader.SetFileName(str(files[1]))
    reader.Update()
    grid = reader.GetOutput()
    points = vtk_to_numpy(grid.GetPoints().GetData())
    assert points.shape == (4, 3) and grid.GetNumberOfCells() == 1 and grid.GetCell(0).GetNumberOfPoints() == 4
    np.testing.assert_allclose(points[:, :2], TRAJECTORY)
    np.testing.assert_array_equal(vtk_to_numpy(grid.GetPointData().GetArray("epoch")), [0, 1, 2, 3])
    surface = read_surface(store)
    z = height(surface.metrics["loss"])
    # (-1.4, 1.2) clamps to x=-1, between y=1 and 1.5 whose loss is NaN: the nearest finite grid value, at y=1
    assert np.isnan(z[0, 4]) and points[0, 2] == pytest.approx(z[0, 3])
    assert points[3, 2] == pytest.approx(z[3, 1])  # theta* sits on the grid point (0, 0)
    for point in points[1:3]:
        assert point[2] == pytest.approx(surface_at(surface.coords, z, point[0], point[1]))


def test_surface_at_is_exact_on_a_plane_and_falls_back_to_the_nearest_finite_value() -> None:
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 3, 4)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    z = 2 * xx - yy + 1
    for px, py in [(0.3, 1.7), (-1.0, 0.0), (0.99, 2.2)]:
        assert surface_at((x, y), z, px, py) == pytest.approx(2 * px - py + 1)
    assert surface_at((x, y), z, 5.0, -2.0) == pytest.approx(z[-1, 0])  # clamped to the grid's corner
    z[2, 1] = np.nan  # a corner of (0.1, 1.1)'s cell: the nearest finite grid point is (0.5, 1)
    assert surface_at((x, y), z, 0.1, 1.1) == pytest.approx(z[3, 1])
    assert surface_at((x[:1], y), z[:1], 4.0, 1.0) == pytest.approx(z[0, 1])  # one point along x


def test_metric_selection_keeps_the_loss_and_takes_either_spelling(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [4, 4], metrics=("loss", "accuracy", *CURVATURE))
    _, arrays, _ = read_grid(export_vtk(store, tmp_path / "a", metrics=["hessian_ratio", "accuracy"])[0])
    assert_point_data(arrays, store, ["loss", "accuracy", "hessian/ratio"])
    _, arrays, _ = read_grid(export_vtk(store.parent, tmp_path / "b", metrics=["hessian/lambda_max"])[0])
    assert_point_data(arrays, store, ["loss", "hessian/lambda_max"])


def refused(store: Path, out: Path, message: str, **kwargs) -> None:
    with pytest.raises(UserError) as err:
        export_vtk(store, out, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_refusals_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = make_store(tmp_path / "run" / "landscape.zarr", [4, 4])
    refused(store, out, "metric 'lambda' is not in store", metrics=["accuracy", "lambda"])
    refused(store, out, "it holds: loss, accuracy", metrics=["lambda"])
    refused(tmp_path, out, f"{tmp_path} is not a landscape store")
    refused(tmp_path / "none.zarr", out, "none.zarr is not a landscape store")
    partial = make_store(tmp_path / "partial.zarr", [9, 8], preview=2, full_done=False, preview_done=False)
    (tmp_path / "file").write_text("")
    refused(store, tmp_path / "file" / "vtk", "cannot write the VTK files into")
    refused(partial, out, f"store {partial} has no complete level (8/9 tiles done); finish it with `landscape`")

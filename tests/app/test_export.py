"""landscape-export and landscape-plot as a user runs them: the export of a run folder into its vtk/ (read back with
VTK's readers), of the session's real run; bad input (not a store, no complete level, an unknown metric) is one
line on stderr, exit code 2, and nothing written, neither VTK files nor figures/ nor summary.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOXML import vtkXMLStructuredGridReader, vtkXMLUnstructuredGridReader

from engine.app.cli import export_main, plot_main
from engine.store.read import read_surface
from helpers import run_cli
from store_fixtures import make_store

TRAJECTORY = np.array([[-0.8, 1.0], [-0.3, 0.4], [0.0, 0.0]])


def read(path: Path, reader_type: type) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Points [n, 3] and point data of a VTK XML file, read by VTK's own reader."""
    reader = reader_type()
    reader.SetFileName(str(path))
    reader.Update()
    grid = reader.GetOutput()
    data = grid.GetPointData()
    arrays = {data.GetArrayName(k): vtk_to_numpy(data.GetArray(k)) for k in range(data.GetNumberOfArrays())}
    return vtk_to_numpy(grid.GetPoints().GetData()), arrays


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_export_of_a_run_folder_writes_its_vtk_folder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "pca"
    store = make_store(run / "landscape.zarr", [6, 5], trajectory=TRAJECTORY)
    done = run_cli("export_main", "runs/pca", "--metrics", "accuracy", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    surface_file, trajectory_file = run / "vtk" / "surface.vts", run / "vtk" / "trajectory.vtu"
    assert "runs/pca/landscape.zarr: complete" in done.stdout
    assert str(surface_file.relative_to(tmp_path)) in done.stdout
    assert str(trajectory_file.relative_to(tmp_path)) in done.stdout
    surface = read_surface(store)
    points, arrays = read(surface_file, vtkXMLStructuredGridReader)
    assert set(arrays) == {"loss", "accuracy"}
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], surface.metrics[name].ravel(order="F"))
    points, arrays = read(trajectory_file, vtkXMLUnstructuredGridReader)
    np.testing.assert_allclose(points[:, :2], TRAJECTORY)
    np.testing.assert_array_equal(arrays["epoch"], [0, 1, 2])


def test_export_of_a_real_run_with_log_height(trained_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, _, result = trained_run
    export_main([str(result.store), "--log", "--out", str(tmp_path / "vtk")])
    assert "surface.vts" in capsys.readouterr().out and files_under(tmp_path) == {"vtk", "vtk/surface.vts"}
    surface = read_surface(result.store)
    points, arrays = read(tmp_path / "vtk" / "surface.vts", vtkXMLStructuredGridReader)
    assert set(arrays) == set(surface.metrics)
    np.testing.assert_array_equal(arrays["loss"], surface.metrics["loss"].ravel(order="F"))
    np.testing.assert_allclose(points[:, 2], np.log10(surface.metrics["loss"].astype(float)).ravel(order="F"),
                               rtol=1e-6)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """argv and the expected message of each refused input; the stores live under tmp_path."""
    (tmp_path / "folder").mkdir()
    make_store(tmp_path / "runs" / "partial" / "landscape.zarr", [9, 8], preview=2, full_done=False,
               preview_done=False)
    make_store(tmp_path / "runs" / "ok" / "landscape.zarr", [4, 4])
    return {
        "not a store": (["folder"], "folder is not a landscape store"),
        "no complete level": (["runs/partial"], "has no complete level (8/9 tiles done); finish it with `landscape`"),
        "unknown metric": (["runs/ok", "--metrics", "loss", "sharpness"],
                           "metric 'sharpness' is not in store runs/ok/landscape.zarr; it holds: loss, accuracy"),
    }


CASES = ["not a store", "no complete level", "unknown metric"]


@pytest.mark.parametrize("case", CASES)
def test_export_refuses_bad_input_in_one_line_and_writes_nothing(case: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    argv, message = bad_inputs(tmp_path)[case]
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        export_main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert files_under(tmp_path) == before


def test_export_refusal_in_a_subprocess_exits_2_with_one_line(tmp_path: Path) -> None:
    argv, message = bad_inputs(tmp_path)["no complete level"]
    before = files_under(tmp_path)
    done = run_cli("export_main", *argv, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("case", CASES)
def test_plot_refuses_bad_input_in_one_line_and_writes_nothing(case: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    argv, message = bad_inputs(tmp_path)[case]
    before = files_under(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        plot_main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert files_under(tmp_path) == before  # no figures/, no summary.json

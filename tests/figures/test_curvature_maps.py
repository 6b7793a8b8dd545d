"""engine.figures.curvature: files written, what reaches the axes (log floor, ranks, norms, orientation), bad values."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import TwoSlopeNorm
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure

import engine.figures.curvature as ph
from engine.figures.curvature import draw_curvature_maps, draw_density, draw_eigenvalues
from helpers import PLOT_X as X
from helpers import PLOT_Y as Y
from helpers import file_names as names


def assert_png(path: Path) -> None:
    """A non-trivial RGB(A) image that matplotlib can read back."""
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)


def fields(x: np.ndarray = X, y: np.ndarray = Y) -> dict[str, np.ndarray]:
    """A saddle-ish landscape laid out as arr[i, j] = f(x[i], y[j]): lambda_max = 2 + x, lambda_min = y (both signs)."""
    xx, yy = np.meshgrid(x, y, indexing="ij")
    lmax, lmin = 2.0 + xx, yy
    return {"loss": xx**2 + 2 * yy**2, "lambda_max": lmax, "lambda_min": lmin, "ratio": lmin / lmax}


def meshes(fig: Figure) -> list[QuadMesh]:
    """The data heatmaps of a figure (not the colourbars' own meshes)."""
    return [c for ax in fig.axes for c in ax.collections if isinstance(c, QuadMesh) and ax.get_label() != "<colorbar>"]


def test_density_writes_png_and_pdf_on_a_floored_log_axis(tmp_path: Path, figures: dict[str, Figure]) -> None:
    grid = np.linspace(-1.0, 5.0, 200)
    density = np.exp(-0.5 * ((grid - 2.0) / 0.3) ** 2)
    density[:40] = 0.0  # exact zeros, as far from the nodes' Gaussians
    density[50] = np.nan
    paths = draw_density(grid, density, tmp_path / "new" / "figs", formats=["png", "pdf"], title="slq")
    assert names(paths) == {"hessian_density.png", "hessian_density.pdf"}
    assert sorted(paths) == sorted((tmp_path / "new" / "figs").iterdir())
    assert_png(tmp_path / "new" / "figs" / "hessian_density.png")
    assert (tmp_path / "new" / "figs" / "hessian_density.pdf").read_bytes().startswith(b"%PDF")
    ax = figures["hessian_density"].axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "eigenvalue" and ax.get_ylabel() == "density" and ax.get_title() == "slq"
    drawn = ax.get_lines()[0].get_ydata()
    floor = np.nanmax(density) * ph.DENSITY_FLOOR
    assert drawn.min() == pytest.approx(floor, rel=1e-9, abs=0.0)  # zeros raised to the floor, not 0
    assert (drawn[:40] == floor).all()
    assert np.ma.getmaskarray(drawn)[50] and np.ma.getmaskarray(drawn).sum() == 1
    assert plt.get_fignums() == []


@pytest.mark.parametrize("case", ["all_zero", "all_nan", "negative_noise"])
def test_density_degenerate_inputs_neither_raise_nor_warn(tmp_path: Path, case: str) -> None:
    grid = np.linspace(0.0, 1.0, 50)
    density = {"all_zero": np.zeros(50), "all_nan": np.full(50, np.nan),
               "negative_noise": np.where(np.arange(50) % 2, 1.0, -1e-3)}[case]
    paths = draw_density(grid, density, tmp_path, formats=["png"])
    assert names(paths) == {"hessian_density.png"}
    assert_png(paths[0])


def test_density_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="density"):
        draw_density(np.linspace(0, 1, 10), np.ones(9), tmp_path)


def test_eigenvalues_ranked_largest_first_with_lambda_min_line(tmp_path: Path, figures: dict[str, Figure]) -> None:
    paths = draw_eigenvalues(np.array([3.0, 10.0, np.nan, 5.0, -1.0]), tmp_path, formats=["png"], lambda_min=-2.5)
    assert names(paths) == {"hessian_eigenvalues.png"}
    assert_png(paths[0])
    ax = figures["hessian_eigenvalues"].axes[0]
    stem = ax.containers[0]
    np.testing.assert_array_equal(stem.markerline.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(stem.markerline.get_ydata(), [10.0, 5.0, 3.0, -1.0])
    (line,) = [line for line in ax.get_lines() if line.get_label() == "lambda_min"]
    assert line.get_linestyle() == "--" and set(line.get_ydata()) == {-2.5}
    assert "lambda_min" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_eigenvalues_without_lambda_min_and_empty(tmp_path: Path, figures: dict[str, Figure]) -> None:
    draw_eigenvalues(np.array([1.0, 2.0]), tmp_path, formats=["png"])
    assert not [line for line in figures["hessian_eigenvalues"].axes[0].get_lines() if line.get_label() == "lambda_min"]
    paths = draw_eigenvalues(np.array([np.nan]), tmp_path / "empty", formats=["png"], lambda_min=np.nan)
    assert_png(paths[0])
    with pytest.raises(ValueError, match="1D"):
        draw_eigenvalues(np.ones((2, 2)), tmp_path)


def test_curvature_maps_2d_figures_orientation_and_norms(tmp_path: Path, figures: dict[str, Figure]) -> None:
    f = fields()
    paths = draw_curvature_maps((X, Y), f["loss"], f["lambda_max"], f["lambda_min"], f["ratio"], tmp_path / "h",
                                formats=["png"], title="resnet", markers={"theta*": (0.0, 0.0)})
    stems = ("hessian_ratio", "hessian_lambda_max", "hessian_lambda_min")
    assert names(paths) == {f"{s}.png" for s in stems}
    for path in paths:
        assert_png(path)
    (lmax,) = meshes(figures["hessian_lambda_max"])
    drawn = np.asarray(lmax.get_array()).reshape(len(Y), len(X))  # rows are y, columns are x
    np.testing.assert_allclose(drawn, np.broadcast_to(2.0 + X, (len(Y), len(X))))
    (lmin,) = meshes(figures["hessian_lambda_min"])
    assert isinstance(lmin.norm, TwoSlopeNorm) and lmin.norm.vcenter == 0.0
    assert lmin.get_cmap().name == ph.SIGNED_CMAP
    ratio_fig = figures["hessian_ratio"]
    (mesh,) = meshes(ratio_fig)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (0.0, 1.0)
    assert np.asarray(mesh.get_array()).min() >= 0.0  # |ratio|, though lambda_min < 0 on part of the plane
    ax = ratio_fig.axes[0]
    contours = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours) == 1 and len(contours[0].levels) >= 3
    assert "theta*" in [t.get_text() for t in ax.texts]
    assert ax.get_title() == "resnet\n|lambda_min / lambda_max|"
    assert plt.get_fignums() == []


def test_curvature_maps_draw_markers_where_they_are(tmp_path: Path, figures: dict[str, Figure]) -> None:
    """An off-centre marker lands at (x, y), not (y, x), on each 2D map, and at its x on both 1D panels."""
    f = fields()
    mark = (X[7], Y[1])  # (0.75, -1/6): off-centre, x != y
    draw_curvature_maps((X, Y), f["loss"], f["lambda_max"], f["lambda_min"], f["ratio"], tmp_path, formats=["png"],
                        markers={"theta*": (0.0, 0.0), "B": mark})
    for stem in ("hessian_ratio", "hessian_lambda_max", "hessian_lambda_min"):
        ax = figures[stem].axes[0]
        (line,) = [line for line in ax.get_lines() if line.get_label() == "B"]
        np.testing.assert_allclose([*line.get_xdata(), *line.get_ydata()], mark)
        (note,) = [t for t in ax.texts if t.get_text() == "B"]
        np.testing.assert_allclose(note.xy, mark)
    draw_curvature_maps((X,), X**2, 2.0 + X, X - 0.2, (X - 0.2) / (2.0 + X), tmp_path / "line", formats=["png"],
                        markers={"B": (mark[0],)})
    for ax in figures["hessian_curvature_1d"].axes[:2]:  # loss panel, eigenvalue panel
        (line,) = [line for line in ax.get_lines() if line.get_label() == "B"]
        np.testing.assert_allclose(line.get_xdata(), [mark[0], mark[0]])
    assert plt.get_fignums() == []


def test_curvature_maps_survive_nan_tiles_inf_and_constant_loss(tmp_path: Path, figures: dict[str, Figure]) -> None:
    f = fields()
    for name in ("lambda_max", "lambda_min", "ratio"):
        f[name][:4, :4] = np.nan  # a tile not done yet
    f["ratio"][-1, -1] = np.inf  # lambda_max == 0
    loss = np.full_like(f["loss"], 2.5)
    paths = draw_curvature_maps((X, Y), loss, f["lambda_max"], f["lambda_min"], f["ratio"], tmp_path, formats=["png"])
    assert len(paths) == 3 and all(p.stat().st_size > 0 for p in paths)
    ax = figures["hessian_ratio"].axes[0]
    assert not [c for c in ax.collections if isinstance(c, ContourSet)]  # a constant loss has no contour lines
    (mesh,) = meshes(figures["hessian_ratio"])
    drawn = np.ma.masked_invalid(mesh.get_array()).reshape(len(Y), len(X))
    assert np.ma.getmaskarray(drawn)[:4, :4].all() and np.ma.getmaskarray(drawn).sum() == 16
    assert drawn[-1, -1] == 1.0  # +inf saturates at the top of the colour range
    cbar = figures["hessian_ratio"].axes[-1]
    assert cbar.get_label() == "<colorbar>"


def test_curvature_maps_all_nan_and_single_sign(tmp_path: Path, figures: dict[str, Figure]) -> None:
    f = fields()
    nan = np.full_like(f["loss"], np.nan)
    one_finite = nan.copy()
    one_finite[2, 3] = 1.0
    paths = draw_curvature_maps((X, Y), one_finite, nan, nan, nan, tmp_path / "nan", formats=["png"])
    assert len(paths) == 3 and all(p.stat().st_size > 0 for p in paths)
    assert not meshes(figures["hessian_lambda_max"])
    negative = -np.abs(f["lambda_min"]) - 0.1
    draw_curvature_maps((X, Y), None, f["lambda_max"], negative, negative / f["lambda_max"], tmp_path / "neg",
                        formats=["png"])
    (lmin,) = meshes(figures["hessian_lambda_min"])
    assert not isinstance(lmin.norm, TwoSlopeNorm)
    assert lmin.norm.vmin == pytest.approx(-lmin.norm.vmax) == pytest.approx(negative.min())
    assert not [c for c in figures["hessian_ratio"].axes[0].collections if isinstance(c, ContourSet)]


def test_curvature_1d_draws_one_figure_with_loss_panel(tmp_path: Path, figures: dict[str, Figure]) -> None:
    lmax, lmin = 2.0 + X, X - 0.2
    lmin[3] = np.nan
    paths = draw_curvature_maps((X,), X**2, lmax, lmin, lmin / lmax, tmp_path, formats=["png"],
                                markers={"theta*": (0.0,)})
    assert names(paths) == {"hessian_curvature_1d.png"}
    assert_png(paths[0])
    fig = figures["hessian_curvature_1d"]
    assert len(fig.axes) == 3  # loss panel, eigenvalue panel, twin ratio axis
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert {"loss", "lambda_max", "lambda_min", "|lambda_min / lambda_max|", "theta*"} <= labels
    (ratio_line,) = [line for ax in fig.axes for line in ax.get_lines() if line.get_label().startswith("|")]
    ratio = ratio_line.get_ydata()
    assert np.ma.getmaskarray(ratio)[3] and ratio.min() >= 0.0
    paths = draw_curvature_maps((X,), None, lmax, lmin, lmin / lmax, tmp_path / "noloss", formats=["png"])
    assert len(figures["hessian_curvature_1d"].axes) == 2
    nan = np.full_like(X, np.nan)
    draw_curvature_maps((X,), nan, nan, nan, nan, tmp_path / "nan", formats=["png"])
    assert plt.get_fignums() == []


def test_curvature_rejects_bad_shapes_and_markers(tmp_path: Path) -> None:
    f = fields()
    with pytest.raises(ValueError, match="lambda_min"):
        draw_curvature_maps((X, Y), f["loss"], f["lambda_max"], f["lambda_min"].T, f["ratio"], tmp_path)
    with pytest.raises(ValueError, match="coords"):
        draw_curvature_maps((X, Y, X), f["loss"], f["lambda_max"], f["lambda_min"], f["ratio"], tmp_path)
    with pytest.raises(ValueError, match="marker"):
        draw_curvature_maps((X, Y), f["loss"], f["lambda_max"], f["lambda_min"], f["ratio"], tmp_path,
                            markers={"theta*": (0.0,)})

"""engine.figures.surfaces: the files written, robustness to missing/diverging values, orientation and clipping."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from engine.figures.common import masked_grid, prepare
from engine.figures.surfaces import draw_surfaces
from helpers import PLOT_X as X
from helpers import PLOT_Y as Y
from helpers import bowl
from helpers import file_names as names


def test_2d_writes_every_figure_in_every_format(tmp_path: Path) -> None:
    loss = bowl()
    metrics = {"loss": loss, "accuracy": 1 - loss / loss.max(), "grad_norm": 3 * loss}
    paths = draw_surfaces([X, Y], metrics, tmp_path / "new" / "figs", title="bowl", markers={"theta*": (0.0, 0.0)})
    stems = ["contour", "contourf", "heatmap", "surface3d", "accuracy_heatmap", "grad_norm_heatmap"]
    assert names(paths) == {f"{s}.{f}" for s in stems for f in ("png", "pdf")}
    assert sorted(paths) == sorted((tmp_path / "new" / "figs").iterdir())
    for path in paths:
        assert path.stat().st_size > 0
        if path.suffix == ".png":
            image = mpimg.imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        else:
            assert path.read_bytes().startswith(b"%PDF")
    assert plt.get_fignums() == []


def test_1d_writes_line_and_one_line_per_other_metric(tmp_path: Path) -> None:
    metrics = {"loss": X**2, "accuracy": 1 - X**2 / 2, "sharpness": np.abs(X)}
    paths = draw_surfaces([X], metrics, tmp_path, markers={"theta*": (0.0,)})
    assert names(paths) == {"line.png", "line.pdf", "sharpness_line.png", "sharpness_line.pdf"}
    for path in paths:
        assert path.stat().st_size > 0
    height, width = mpimg.imread(tmp_path / "line.png").shape[:2]
    assert height > 100 and width > 100
    assert plt.get_fignums() == []


MARK = (X[7], Y[1])  # (0.75, -1/6): off-centre, x != y, on a grid node (the 3D star sits on that node's value)
PATH = np.array([[-0.9, 1.3], [-0.4, 0.6], [0.3, 0.1], MARK])  # asymmetric: drawn as (y, x) it would differ


def test_markers_and_trajectory_are_drawn_where_they_are(tmp_path: Path, figures: dict[str, Figure]) -> None:
    """An off-centre marker and an asymmetric trajectory land at (x, y), not (y, x), on every 2D figure; the 3D
    star sits at its own node's value; a 1D marker's line stands at its x."""
    loss = bowl()
    draw_surfaces([X, Y], {"loss": loss, "accuracy": 1 - loss / loss.max()}, tmp_path, formats=["png"],
                  markers={"theta*": (0.0, 0.0), "B": MARK}, path=PATH)
    for stem in ("contour", "contourf", "heatmap", "accuracy_heatmap"):
        ax = figures[stem].axes[0]
        lines = {line.get_label(): line for line in ax.get_lines()}
        np.testing.assert_allclose(lines["trajectory"].get_xdata(), PATH[:, 0])
        np.testing.assert_allclose(lines["trajectory"].get_ydata(), PATH[:, 1])
        np.testing.assert_allclose([*lines["B"].get_xdata(), *lines["B"].get_ydata()], MARK)
        (note,) = [t for t in ax.texts if t.get_text() == "B"]
        np.testing.assert_allclose(note.xy, MARK)
    ax = figures["surface3d"].axes[0]
    assert not ax.get_lines()  # no trajectory over the 3D surface
    stars = [c for c in ax.collections if hasattr(c, "_offsets3d")]  # scatter(): one per marker, in order
    assert len(stars) == 2
    node_value = masked_grid(loss)[1, 7]
    np.testing.assert_allclose(np.ravel(stars[1]._offsets3d), [*MARK, node_value])
    (note,) = [t for t in ax.texts if t.get_text() == " B"]
    np.testing.assert_allclose(note.get_position_3d(), [*MARK, node_value])
    draw_surfaces([X], {"loss": X**2}, tmp_path / "line", formats=["png"], markers={"B": (MARK[0],)})
    (line,) = [line for line in figures["line"].axes[0].get_lines() if line.get_label() == "B"]
    np.testing.assert_allclose(line.get_xdata(), [MARK[0], MARK[0]])
    assert plt.get_fignums() == []


@pytest.mark.parametrize(("case", "log_scale"), [("inf_nan_huge", False), ("inf_nan_huge", True), ("all_nan", False),
                                                ("constant", True), ("single_finite", False), ("all_inf", True)])
def test_bad_values_never_raise_nor_warn(tmp_path: Path, case: str, log_scale: bool) -> None:
    loss = bowl()
    if case == "inf_nan_huge":
        loss[-2:, -2:] = np.inf
        loss[0, 0], loss[0, -1], loss[1, 1] = np.nan, 1e9, -np.inf
    elif case == "all_nan":
        loss = np.full_like(loss, np.nan)
    elif case == "constant":
        loss = np.full_like(loss, 2.5)
    elif case == "single_finite":
        loss = np.full_like(loss, np.nan)
        loss[3, 3] = 1.0
    else:
        loss = np.full_like(loss, np.inf)
    metrics = {"loss": loss}
    if case in ("inf_nan_huge", "all_nan"):
        metrics["accuracy"] = np.where(np.isfinite(loss), 0.5, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = draw_surfaces([X, Y], metrics, tmp_path, formats=["png"], log_scale=log_scale,
                              markers={"theta*": (0.0, 0.0)})
        assert len(paths) == 3 + len(metrics) and all(p.stat().st_size > 0 for p in paths)
        lines = draw_surfaces([X], {k: v[:, 3] for k, v in metrics.items()}, tmp_path, formats=["png"],
                              log_scale=log_scale, markers={"theta*": (0.0,)})
        assert names(lines) == {"line.png"}
    assert plt.get_fignums() == []


def test_log_scale_with_zeros_and_negatives(tmp_path: Path, recorded: dict[str, list]) -> None:
    loss = bowl() - 1.0  # zeros are absent, but a band of negatives and a zero are forced in
    loss[4, 1] = 0.0
    smallest_positive = loss[loss > 0].min()
    z = masked_grid(loss, log_scale=True)
    assert np.isfinite(z.compressed()).all()
    assert z.min() == pytest.approx(np.log10(smallest_positive))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draw_surfaces([X, Y], {"loss": loss}, tmp_path, log_scale=True, formats=["png"])
        draw_surfaces([X], {"loss": np.linspace(-1, 1, 9)}, tmp_path, log_scale=True, formats=["png"])
    drawn = recorded["contourf"][0][0]
    assert drawn.min() == pytest.approx(np.log10(smallest_positive))


def test_orientation_x_dependent_surface_has_vertical_iso_lines(tmp_path: Path, recorded: dict[str, list]) -> None:
    loss = np.repeat(X[:, None], len(Y), axis=1) + 2.0  # depends on x only: arr[i, j] = x[i] + 2
    z = masked_grid(loss)
    assert z.shape == (len(Y), len(X))
    np.testing.assert_allclose(z, np.broadcast_to(X + 2.0, z.shape))
    draw_surfaces([X, Y], {"loss": loss}, tmp_path, formats=["png"])
    drawn, contour_set = recorded["contour"][0]
    np.testing.assert_allclose(drawn, z)
    assert len(contour_set.allsegs) >= 5
    for level in contour_set.allsegs:  # each iso-line is vertical (split only by its inline label), from y0 to y1
        points = np.concatenate([seg for seg in level if len(seg)])
        assert np.ptp(points[:, 0]) < 1e-9
        assert points[:, 1].min() == pytest.approx(Y[0]) and points[:, 1].max() == pytest.approx(Y[-1])
    corners = recorded["pcolormesh"][0][1].get_coordinates()  # cell corners, (rows + 1, columns + 1, xy)
    assert corners.shape == (len(Y) + 1, len(X) + 1, 2)
    assert np.ptp(corners[:, 0, 0]) == 0 and np.ptp(corners[0, :, 1]) == 0  # x along columns, y along rows
    assert corners[0, 0, 0] < X[0] < corners[0, 1, 0] and corners[0, -2, 0] < X[-1] < corners[0, -1, 0]
    assert corners[0, 0, 1] < Y[0] < corners[1, 0, 1] and corners[-2, 0, 1] < Y[-1] < corners[-1, 0, 1]


def test_explicit_clip_caps_inf_and_keeps_nan_masked(tmp_path: Path, recorded: dict[str, list]) -> None:
    loss = bowl()
    loss[-1, -1], loss[-1, 0], loss[0, 0], loss[1, 0] = np.inf, 1e9, np.nan, -np.inf
    p = prepare(loss, clip=2.0)
    assert p.max() == 2.0
    assert p[-1, -1] == 2.0 and p[-1, 0] == 2.0
    assert np.ma.getmaskarray(p)[0, 0] and np.ma.getmaskarray(p)[1, 0]
    assert np.ma.getmaskarray(p).sum() == 2
    draw_surfaces([X, Y], {"loss": loss}, tmp_path, clip=2.0, formats=["png"])
    for kind in ("contour", "contourf", "pcolormesh"):
        drawn = recorded[kind][0][0]
        assert drawn.max() <= 2.0
        assert np.ma.getmaskarray(drawn).T[0, 0] and np.ma.getmaskarray(drawn).T[1, 0]
        assert drawn.T[-1, -1] == 2.0


def test_mismatched_shapes_and_markers_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss"):
        draw_surfaces([X, Y], {"loss": bowl().T}, tmp_path)
    with pytest.raises(ValueError, match="coords"):
        draw_surfaces([X, Y, X], {"loss": bowl()}, tmp_path)
    with pytest.raises(ValueError, match="marker"):
        draw_surfaces([X, Y], {"loss": bowl()}, tmp_path, markers={"theta*": (0.0,)})

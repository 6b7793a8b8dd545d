"""Standard errors in the figures: the plane's loss_stderr_heatmap (and no map of the other standard errors), the
line's band of +-2 standard errors around loss and accuracy, the interactive page's error bars and map, and a store's
figures drawn with its standard errors (a chosen metric brings its own along)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from browser import chromium_path, leaving, visit
from browser import drawn as drawn_page
from engine.figures.common import prepare
from engine.figures.draw import draw
from engine.figures.pages import line_figures, surface_figures
from engine.figures.surfaces import BAND, draw_surfaces
from helpers import PLOT_X as X
from helpers import PLOT_Y as Y
from helpers import bowl
from helpers import file_names as names
from store_fixtures import make_store

WITH_STDERR = ("loss", "accuracy", "loss_stderr", "accuracy_stderr")


def test_plane_draws_the_loss_stderr_map_only(tmp_path: Path, figures: dict[str, Figure]) -> None:
    loss = bowl()
    metrics = {"loss": loss, "accuracy": 1 - loss / loss.max(), "loss_stderr": 0.01 + 0.02 * loss,
               "accuracy_stderr": np.full_like(loss, 0.01)}
    paths = draw_surfaces([X, Y], metrics, tmp_path, formats=["png"], markers={"theta*": (0.0, 0.0)})
    assert names(paths) == {f"{s}.png" for s in ("contour", "contourf", "heatmap", "surface3d", "accuracy_heatmap",
                                                  "loss_stderr_heatmap")}
    ax = figures["loss_stderr_heatmap"].axes[0]
    assert "standard error of the loss" in ax.get_title()
    mesh = ax.collections[0]  # capped like the loss: a far corner's large standard error does not wash out the basin
    want = prepare(metrics["loss_stderr"], auto=True).T.ravel()
    assert want.max() < metrics["loss_stderr"].max()
    np.testing.assert_allclose(np.ma.getdata(mesh.get_array()).ravel(), want)


def test_line_draws_a_band_of_two_standard_errors(tmp_path: Path, figures: dict[str, Figure]) -> None:
    loss, se = 1 + X**2, 0.05 + 0.1 * np.abs(X)
    metrics = {"loss": loss, "accuracy": 1 - X**2 / 2, "loss_stderr": se, "accuracy_stderr": np.full_like(X, 0.02),
               "sharpness": np.abs(X)}
    paths = draw_surfaces([X], metrics, tmp_path, formats=["png"], markers={"theta*": (0.0,)})
    assert names(paths) == {"line.png", "sharpness_line.png"}
    assert BAND == 2.0
    fig = figures["line"]
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # loss on the left axis, accuracy on the right
    vertices = bands[0].get_paths()[0].vertices
    at_edge = vertices[np.isclose(vertices[:, 0], X[-1])][:, 1]
    assert at_edge.min() == pytest.approx(loss[-1] - 2 * se[-1]) and at_edge.max() == pytest.approx(
        loss[-1] + 2 * se[-1])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "loss \u00b12 s.e." in labels and "accuracy \u00b12 s.e." in labels
    assert not any(c for c in figures["sharpness_line"].axes[0].collections if isinstance(c, PolyCollection))


def test_pages_have_error_bars_and_the_loss_stderr_map() -> None:
    se = 0.05 + 0.1 * np.abs(X)
    line = dict(line_figures(X, {"loss": 1 + X**2, "accuracy": 1 - X**2 / 2, "loss_stderr": se}, title="t",
                             label="d1", clip=None, log_default=False, markers={"theta*": (0.0,)}))
    assert list(line) == ["loss-line"]
    loss_trace, accuracy_trace = line["loss-line"].data[:2]
    np.testing.assert_allclose(loss_trace.error_y.array, 2 * se)
    assert accuracy_trace.error_y.array is None
    loss = bowl()
    maps = dict(surface_figures([X, Y], {"loss": loss, "loss_stderr": 0.01 + loss, "accuracy_stderr": 0 * loss},
                                title="t", labels=["d1", "d2"], clip=None, log_default=False, markers={}, path=None))
    assert "map-loss_stderr" in maps and "map-accuracy_stderr" not in maps


def test_store_figures_with_standard_errors(tmp_path: Path) -> None:
    """A store holding standard errors draws the line with its band and no figure of the standard errors alone;
    choosing metrics brings their standard errors along (landscape-plot --metrics)."""
    line = make_store(tmp_path / "line.zarr", [11], metrics=WITH_STDERR)
    assert names(draw(line, tmp_path / "line", metrics=["accuracy"])) == {"line.png", "line.pdf", "landscape.html"}
    plane = make_store(tmp_path / "plane.zarr", [7, 5], metrics=WITH_STDERR)
    drawn = names(draw(plane, tmp_path / "plane", metrics=["loss"]))
    assert "loss_stderr_heatmap.png" in drawn and "accuracy_heatmap.png" not in drawn
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    for page in (tmp_path / "line" / "landscape.html", tmp_path / "plane" / "landscape.html"):
        seen = visit(page)
        assert seen.errors == [] and leaving(seen.requests) == [], page
        assert seen.screenshot is not None and drawn_page(seen.screenshot), page

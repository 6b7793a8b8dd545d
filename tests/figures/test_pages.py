"""The pages: each opened in a real headless Chromium with the network off (a surface page with curvature maps and a
trajectory, a 1D page, a partial run's page, a run's report, a comparison page): no console error, no request
leaving the file, and a screenshot with a drawn plot in it. The report's numbers equal summary.json's; the contour
levels and the refined 3D mesh are checked on known values."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser import PageVisit, chromium_path, drawn, leaving, visit
from engine.app.compare import compare_runs
from engine.config.schema import PlotConfig
from engine.figures.common import contour_levels
from engine.figures.draw import draw, draw_page, draw_report
from engine.figures.report import flatten
from engine.figures.surfaces import bilinear, refined
from store_fixtures import CURVATURE, make_store


def need_chromium() -> None:
    """Pages are checked in a real browser: CI installs Chromium (a failure there); elsewhere the test is skipped."""
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")


def opened(page: Path, scroll_to: str | None = None) -> PageVisit:
    """The page opened offline; it must load cleanly and show a drawn plot."""
    need_chromium()
    seen = visit(page, scroll_to=scroll_to)
    assert seen.errors == [], seen.errors
    assert leaving(seen.requests) == []
    assert seen.screenshot is not None and drawn(seen.screenshot), f"{page.name}: blank or single-colour screenshot"
    return seen


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pages")
    path = np.array([[-0.9, 1.2], [-0.5, 0.8], [-0.2, 0.4], [0.0, 0.0]])
    return {
        "plane": make_store(root / "plane" / "landscape.zarr", [21, 15], metrics=("loss", "accuracy", *CURVATURE),
                            trajectory=path),
        "line": make_store(root / "line" / "landscape.zarr", [31]),
        "partial": make_store(root / "partial" / "landscape.zarr", [13, 13], preview=3, full_done=False),
        "other": make_store(root / "other" / "landscape.zarr", [21, 15]),
    }


def test_surface_page_opens_offline_and_draws(stores: dict[str, Path], tmp_path: Path) -> None:
    page = draw_page(stores["plane"], tmp_path)
    text = page.read_text()
    assert "<script src=" not in text and "http" not in re.sub(r"<script.*?</script>", "", text, flags=re.S)
    for div in ("loss-surface", "loss-contour", "map-accuracy", "map-hessian-lambda_max", "map-hessian-ratio"):
        assert f"id='{div}'" in text, div
    seen = opened(page, scroll_to="loss-contour")  # the 3D surface above has drawn by then; the map is in view
    assert "21x15 grid" in seen.text


def test_line_page_opens_offline_and_draws(stores: dict[str, Path], tmp_path: Path) -> None:
    seen = opened(draw_page(stores["line"], tmp_path))
    assert "31-point line" in seen.text and "Partial run" not in seen.text


def test_partial_run_page_says_so_and_shows_the_preview(stores: dict[str, Path], tmp_path: Path) -> None:
    seen = opened(draw_page(stores["partial"], tmp_path))
    assert "Partial run" in seen.text and "coarse preview" in seen.text


@pytest.fixture(scope="module")
def report(trained_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's report, written into a copy of its run folder with its figures drawn."""
    _, _, result = trained_run
    run = tmp_path_factory.mktemp("report") / result.run_dir.name
    run.mkdir()
    for name in ("summary.json", "provenance.json"):
        shutil.copy(result.run_dir / name, run / name)
    figures = draw(result.store, run / "figures", PlotConfig(formats=["png"]))
    return draw_report(result.store, run, figures)


def test_report_numbers_equal_summary_json(report: Path) -> None:
    summary = json.loads((report.parent / "summary.json").read_text())
    cells = dict(re.findall(r"<tr data-key='([^']*)'><th>[^<]*</th><td[^>]*data-value='([^']*)'", report.read_text()))
    shown = {html.unescape(k): json.loads(html.unescape(v)) for k, v in cells.items()
             if not k.startswith("provenance.")}
    expected = dict(flatten({k: v for k, v in summary.items()}))
    assert shown == expected


def test_report_holds_figures_config_and_provenance(report: Path) -> None:
    text = report.read_text()
    provenance = json.loads((report.parent / "provenance.json").read_text())
    for key in ("engine", "torch", "ranks", "devices", "fingerprint", "config_hash", "wall_seconds"):
        assert f"data-key='provenance.{key}'" in text, key
    assert provenance["ranks"] == 1 and provenance["fingerprint"]
    assert text.count("data:image/png;base64,") == len(list((report.parent / "figures").glob("*.png"))) >= 4
    assert "href='figures/landscape.html'" in text and "Resolved config" in text
    seen = opened(report, scroll_to="figures")
    assert "Provenance" in seen.text and "center.loss" in seen.text


def test_comparison_page_opens_offline_and_draws(stores: dict[str, Path], tmp_path: Path) -> None:
    files = compare_runs([stores["plane"].parent, stores["other"].parent], tmp_path)
    page = tmp_path / "comparison.html"
    assert page in files
    text = page.read_text()
    assert "data-run='plane'" in text and "data-run='other'" in text and text.count("coloraxis") >= 2
    seen = opened(page)
    assert "Comparison of 2 runs" in seen.text


def test_log_levels_resolve_a_basin_and_cover_the_data() -> None:
    z = np.ma.masked_array(np.geomspace(0.04, 40.0, 500))
    log, linear = contour_levels(z, "log"), contour_levels(z, "linear")
    assert log is not None and linear is not None
    assert log[0] <= 0.04 and log[-1] >= 40.0 and np.all(np.diff(log) > 0)
    assert (log < 1.0).sum() >= 8 and (linear < 1.0).sum() <= 2  # the basin below 1: bands where linear has one
    quantile = contour_levels(z, "quantile", 10)
    assert quantile is not None
    counts = np.histogram(z.compressed(), quantile)[0]
    assert counts.min() >= 45 and counts.max() <= 55  # equal numbers of points per band
    assert contour_levels(np.ma.masked_array([-1.0, 2.0]), "log")[0] <= -1.0  # not positive: linear


def test_refined_mesh_keeps_the_grid_and_is_exact_on_a_plane() -> None:
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 2, 4)
    fx, fy = refined(x, 40), refined(y, 40)
    assert set(np.round(x, 12)) <= set(np.round(fx, 12)) and fx[0] == -1 and fx[-1] == 1
    plane = 2 * x[:, None] - 3 * y[None, :] + 1
    np.testing.assert_allclose(bilinear(x, y, plane, fx, fy), 2 * fx[:, None] - 3 * fy[None, :] + 1, atol=1e-12)

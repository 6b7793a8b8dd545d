"""The spectrum's figures with their uncertainty: the SLQ density's band over runs, the eigenvalues' Ritz bounds,
per-block curvature over the network's depth (named ticks for few blocks, integer ticks for many), and a spectrum
of a store written before any of these drawn as before."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from engine.curvature.blocks import BlockSpectra
from engine.curvature.spectra import Spectrum
from engine.figures import curvature
from engine.figures.curvature import BLOCK_LABELS, draw_blocks, draw_density, draw_eigenvalues, draw_spectrum


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures drawn, kept open for inspection (common.save closes them)."""
    figures: list[plt.Figure] = []
    save = curvature.common.save

    def keep(fig: plt.Figure, *args: object, **kwargs: object) -> list[Path]:
        figures.append(fig)
        fig.canvas.draw()
        return save(fig, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(curvature.common, "save", keep)
    return figures


def test_density_band_spans_the_runs(tmp_path: Path, kept: list[plt.Figure]) -> None:
    grid = np.linspace(-1, 3, 200)
    runs = np.stack([np.exp(-((grid - c) ** 2) / 0.1) for c in (0.0, 0.2, 1.5)])
    paths = draw_density(grid, runs.mean(0), tmp_path, formats=["png"], runs=runs)
    assert [p.name for p in paths] == ["hessian_density.png"]
    ax = kept[-1].axes[0]
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1 and ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["range of 3 SLQ runs", "mean over runs"]
    with pytest.raises(ValueError, match="per-run densities"):
        draw_density(grid, runs.mean(0), tmp_path, runs=runs[:, :10])


def test_eigenvalue_bounds_are_error_bars(tmp_path: Path, kept: list[plt.Figure]) -> None:
    draw_eigenvalues(np.array([1.0, 3.0, np.nan]), tmp_path, formats=["png"], lambda_min=-0.5,
                     bounds=np.array([0.1, 0.4, 1.0]), lambda_min_bound=0.05)
    ax = kept[-1].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["top eigenvalues", "Ritz residual bound", "lambda_min"]
    bars = ax.containers[-1]
    segments = bars.lines[2][0].get_segments()  # the error bars, largest eigenvalue first
    np.testing.assert_allclose([s[:, 1] for s in segments], [[2.6, 3.4], [0.9, 1.1]])
    with pytest.raises(ValueError, match="bounds"):
        draw_eigenvalues(np.ones(3), tmp_path, bounds=np.ones(2))


def test_blocks_over_depth(tmp_path: Path, kept: list[plt.Figure]) -> None:
    names = ["features.0", "features.3", "classifier"]
    paths = draw_blocks(names, np.array([5.0, 0.5, 0.01]), np.array([-0.2, 0.0, 1e-5]), np.array([30.0, -1.0, 0.1]),
                        tmp_path, formats=["png"], lambda_max_bound=np.array([0.1, 0.01, 0.0]),
                        lambda_min_bound=np.zeros(3), trace_stderr=np.array([1.0, 0.5, 0.0]), title="t")
    assert [p.name for p in paths] == ["hessian_blocks.png"]
    top, middle, bottom = kept[-1].axes
    assert [t.get_text() for t in bottom.get_xticklabels()] == names
    assert top.get_yscale() == "log" and middle.get_yscale() == "symlog"  # decades; both signs
    many = 3 * BLOCK_LABELS
    draw_blocks([f"b{i}" for i in range(many)], np.linspace(1, 2, many), -np.ones(many), np.ones(many), tmp_path,
                formats=["png"])
    assert not any(t.get_text().startswith("b") for t in kept[-1].axes[-1].get_xticklabels())
    with pytest.raises(ValueError, match="3 block names"):
        draw_blocks(names, np.ones(2), np.ones(3), np.ones(3), tmp_path)
    assert [p.name for p in draw_blocks([], np.ones(0), np.ones(0), np.ones(0), tmp_path / "none", ["png"])] == [
        "hessian_blocks.png"]


def test_draw_spectrum_with_and_without_the_added_fields(tmp_path: Path) -> None:
    grid = np.linspace(-1, 1, 30)
    nodes, weights = np.array([[-0.5, 0.5]]), np.array([[0.5, 0.5]])
    old = Spectrum(np.array([1.0]), np.ones((1, 3)), -0.5, 1.0, 0.1, 1.0, grid, np.exp(-grid**2), nodes, weights, 3,
                   10, 0.1)
    assert {p.name for p in draw_spectrum(old, tmp_path / "old", ["png"])} == {"hessian_density.png",
                                                                             "hessian_eigenvalues.png"}
    blocks = BlockSpectra("module", ["a", "b"], np.array([2, 1]), np.ones(2), np.zeros(2), np.zeros(2), np.zeros(2),
                          np.ones(2), np.zeros(2), 6)
    new = Spectrum(*[getattr(old, k) for k in list(vars(old))[:13]], np.array([0.1]), 0.01, 0.2,
                   np.stack([np.exp(-grid**2)] * 2), "ggn", 0.01, blocks)
    assert {p.name for p in draw_spectrum(new, tmp_path / "new", ["png"])} == {
        "hessian_density.png", "hessian_eigenvalues.png", "hessian_blocks.png"}

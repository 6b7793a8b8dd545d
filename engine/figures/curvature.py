"""Hessian figures (SLQ spectral density with its spread over runs, top-k eigenvalues with their Ritz bounds,
per-block curvature over the depth of the network, curvature maps over a 1D line or 2D plane), drawn headless.

Reuses the shared cleaning and saving of engine.figures: NaN and -inf mean "not computed" and are left blank, +inf is
drawn at the largest finite value, and every figure is written once per format into out_dir.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.curvature.spectra import Spectrum
from engine.figures import common

DENSITY_FLOOR = 1e-12  # relative to the peak: zeros of the SLQ density are drawn there so the log axis never breaks
RATIO_CMAP = "YlOrRd"  # light where convex (ratio ~ 0), dark where as curved down as up (ratio >= 1)
SIGNED_CMAP = "RdBu_r"  # diverging, white at 0: blue negative, red positive curvature


def _out(out_dir: str | Path) -> Path:
    """out_dir as a Path, created with its parents."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _titled(title: str, label: str) -> str:
    """The figure title above the quantity's name, as engine.figures.surfaces does."""
    return f"{title}\n{label}" if title else label


def draw_density(
    grid: np.ndarray,
    density: np.ndarray,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "",
    runs: np.ndarray | None = None,
) -> list[Path]:
    """Draw the SLQ eigenvalue density of the Hessian on a log y axis as hessian_density.fmt; return the files.

    With `runs` (each SLQ run's density on the grid, [runs, grid]), the band between their pointwise lowest and
    highest is drawn under the mean: how much one run varies. Values below DENSITY_FLOOR * peak (zeros included)
    are raised to it; non-finite points are left blank."""
    x = np.asarray(grid, dtype=float)
    d = np.array(density, dtype=float)
    if x.ndim != 1 or d.shape != x.shape:
        raise ValueError(f"density of shape {d.shape} does not match grid of shape {x.shape}")
    each = None if runs is None else np.array(runs, dtype=float)
    if each is not None and (each.ndim != 2 or each.shape[1] != x.size):
        raise ValueError(f"per-run densities of shape {each.shape} do not match grid of shape {x.shape}")
    missing = ~np.isfinite(x) | ~np.isfinite(d)
    positive = d[~missing & (d > 0)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    if positive.size:
        floor = float(positive.max()) * DENSITY_FLOOR
        d[~missing] = np.maximum(d[~missing], floor)
        xm = np.ma.masked_array(x, mask=missing)
        if each is not None and len(each) > 1:
            lo = np.maximum(np.nanmin(each, axis=0), floor)
            hi = np.maximum(np.nanmax(each, axis=0), floor)
            ax.fill_between(xm, np.ma.masked_array(lo, mask=missing), np.ma.masked_array(hi, mask=missing),
                            color="C0", alpha=0.25, lw=0, label=f"range of {len(each)} SLQ runs")
        ax.plot(xm, np.ma.masked_array(d, mask=missing), color="C0", lw=1.2,
                label="mean over runs" if each is not None and len(each) > 1 else "density")
        ax.set_yscale("log")
        if each is not None and len(each) > 1:
            ax.legend(loc="best", fontsize=8)
    else:
        common.no_data(ax)
        common.limits(ax, x[np.isfinite(x)])
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    return common.save(fig, _out(out_dir), "hessian_density", formats)


def draw_eigenvalues(
    eigenvalues: np.ndarray,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "",
    lambda_min: float | None = None,
    bounds: np.ndarray | None = None,
    lambda_min_bound: float | None = None,
) -> list[Path]:
    """Draw the top-k eigenvalues, largest first, as stems at ranks 1..k into hessian_eigenvalues.fmt; return the files.

    Non-finite eigenvalues are dropped; lambda_min, when given and finite, is a dashed horizontal line. With
    `bounds` (each eigenvalue's Ritz residual bound, in the eigenvalues' order) error bars show them, and
    lambda_min_bound a band around lambda_min's line."""
    values = np.asarray(eigenvalues, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"eigenvalues must be a 1D array, got shape {values.shape}")
    errors = None if bounds is None else np.asarray(bounds, dtype=float)
    if errors is not None and errors.shape != values.shape:
        raise ValueError(f"bounds of shape {errors.shape} do not match eigenvalues of shape {values.shape}")
    keep = np.isfinite(values)
    order = np.argsort(values[keep])[::-1]
    ranked = values[keep][order]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    handles: list[Any] = []
    if ranked.size:
        ranks = np.arange(1, ranked.size + 1)
        handles.append(ax.stem(ranks, ranked, label="top eigenvalues"))
        if errors is not None:
            handles.append(ax.errorbar(ranks, ranked, yerr=errors[keep][order], fmt="none", ecolor="k", capsize=4,
                                       lw=1.0, label="Ritz residual bound"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lambda_min is not None and np.isfinite(lambda_min):
        handles.append(ax.axhline(float(lambda_min), color="C3", ls="--", lw=1.0, label="lambda_min"))
        if lambda_min_bound is not None and np.isfinite(lambda_min_bound) and lambda_min_bound > 0:
            ax.axhspan(lambda_min - lambda_min_bound, lambda_min + lambda_min_bound, color="C3", alpha=0.15, lw=0)
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    else:
        common.no_data(ax)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    return common.save(fig, _out(out_dir), "hessian_eigenvalues", formats)


BLOCK_LABELS = 24  # at most this many blocks get their names as tick labels


def _scale(ax: Axes, values: np.ndarray) -> None:
    """A log y axis for positive values over more than a decade, a symmetric log one (linear near 0) for values
    over more than two decades that are not all positive, else linear: blocks' curvatures can span decades and
    lambda_min may be negative."""
    finite = values[np.isfinite(values)]
    size = np.abs(finite)
    if not size.size or size.max() == 0:
        return
    top, low = float(size.max()), float(size[size > 0].min())
    if (finite > 0).all() and top > 10 * low:
        ax.set_yscale("log")
    elif top > 100 * low:  # linear within a power of ten about 1e-2 of the top, so ticks never crowd at 0
        ax.set_yscale("symlog", linthresh=10.0 ** np.floor(np.log10(1e-2 * top)), linscale=1.0)


def draw_blocks(
    names: Sequence[str],
    lambda_max: np.ndarray,
    lambda_min: np.ndarray,
    trace: np.ndarray,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "",
    lambda_max_bound: np.ndarray | None = None,
    lambda_min_bound: np.ndarray | None = None,
    trace_stderr: np.ndarray | None = None,
    matrix: str = "Hessian",
) -> list[Path]:
    """Draw each block's lambda_max and lambda_min (with their Ritz bounds as error bars) and trace (+- 2 standard
    errors) in three panels over the blocks in the model's order into hessian_blocks.fmt; return the files.

    The x axis is the block index, labelled with the block names when there are at most BLOCK_LABELS blocks."""
    arrays = {"lambda_max": lambda_max, "lambda_min": lambda_min, "trace": trace, "lambda_max_bound": lambda_max_bound,
              "lambda_min_bound": lambda_min_bound, "trace_stderr": trace_stderr}
    n = len(names)
    checked = {k: np.asarray(v, dtype=float) for k, v in arrays.items() if v is not None}
    for key, values in checked.items():
        if values.shape != (n,):
            raise ValueError(f"{key} of shape {values.shape} does not match {n} block names")
    x = np.arange(n)
    labelled = 0 < n <= BLOCK_LABELS
    long_names = labelled and max(len(str(name)) for name in names) > 3
    fig, axes = plt.subplots(3, 1, figsize=(max(6.4, 0.3 * n + 3) if labelled else 6.4, 7.2), layout="constrained",
                             sharex=True)
    se = checked.get("trace_stderr")
    panels = (("lambda_max", checked.get("lambda_max_bound"), "o", "C0", "lambda_max"),
              ("lambda_min", checked.get("lambda_min_bound"), "v", "C3", "lambda_min"),
              ("trace", None if se is None else 2 * se, "s", "C2", "trace"))
    for ax, (key, error, marker, color, label) in zip(axes, panels):
        if not n:
            common.no_data(ax)
            continue
        ax.errorbar(x, checked[key], yerr=error, fmt=f"{marker}-", color=color, ms=4, capsize=3, lw=1.2)
        if (checked[key] < 0).any():
            ax.axhline(0.0, color="gray", lw=0.6)
        _scale(ax, checked[key])
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(_titled(title, f"each block's diagonal {matrix} block (bars: Ritz bounds; trace: +- 2 s.e.)"),
                      fontsize=10)
    if labelled:
        axes[-1].set_xticks(x, [str(name) for name in names], rotation=60 if long_names else 0,
                            ha="right" if long_names else "center", fontsize=7)
    else:
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("block (model order)")
    return common.save(fig, _out(out_dir), "hessian_blocks", formats)


def draw_spectrum(spectrum: Spectrum, out_dir: str | Path, formats: Sequence[str] = ("png", "pdf"),
                  title: str = "") -> list[Path]:
    """Every figure of a spectrum: hessian_density (with the band over SLQ runs), hessian_eigenvalues (with the
    Ritz bounds) and, with per-block curvature, hessian_blocks; what a store written before them lacks is left
    out of the figures."""
    paths = draw_density(spectrum.grid, spectrum.density, out_dir, formats=formats, title=title,
                         runs=spectrum.density_runs)
    paths += draw_eigenvalues(spectrum.eigenvalues, out_dir, formats=formats, title=title,
                              lambda_min=spectrum.lambda_min, bounds=spectrum.eigenvalue_bounds,
                              lambda_min_bound=spectrum.lambda_min_bound)
    b = spectrum.blocks
    if b is not None:
        paths += draw_blocks(b.names, b.lambda_max, b.lambda_min, b.trace, out_dir, formats=formats, title=title,
                             lambda_max_bound=b.lambda_max_bound, lambda_min_bound=b.lambda_min_bound,
                             trace_stderr=b.trace_stderr, matrix="GGN" if spectrum.matrix == "ggn" else "Hessian")
    return paths


def _signed_norm(data: np.ndarray) -> Normalize:
    """A norm centred at 0: two slopes when data spans both signs, else symmetric around 0 over its largest |value|."""
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 < hi:
        return TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi)
    span = max(abs(lo), abs(hi)) or 1.0
    return Normalize(vmin=-span, vmax=span)


def _heatmap(fig: Figure, ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ma.MaskedArray, label: str,
             signed: bool) -> None:
    """A nearest-cell heatmap of z (already [j, i]) with a colourbar; a "no data" note when nothing is finite."""
    levels = common.contour_levels(z)
    if levels is None:
        common.no_data(ax)
        common.limits(ax, x, y)
        return
    norm = _signed_norm(z.compressed()) if signed else Normalize(vmin=levels[0], vmax=levels[-1])
    mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap=SIGNED_CMAP if signed else common.CMAP, norm=norm)
    fig.colorbar(mesh, ax=ax, label=label)


def _ratio_map(fig: Figure, ax: Axes, x: np.ndarray, y: np.ndarray, ratio: np.ndarray,
               loss: np.ndarray | None) -> None:
    """|lambda_min / lambda_max| on a fixed [0, 1] colour range (above 1: the top colour) under the loss contours."""
    r = np.abs(np.asarray(ratio, dtype=float))
    missing = np.isnan(r)
    over = bool((r[~missing] > 1.0).any())
    z = np.ma.masked_array(np.where(missing, np.nan, np.minimum(r, 1.0)), mask=missing).T
    if z.count():
        mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap=RATIO_CMAP, vmin=0.0, vmax=1.0)
        fig.colorbar(mesh, ax=ax, label="|lambda_min / lambda_max|", extend="max" if over else "neither")
    else:
        common.no_data(ax)
        common.limits(ax, x, y)
    if loss is None or min(z.shape) < 2:
        return
    zl = common.masked_grid(loss)
    levels = common.contour_levels(zl)
    inner = common.inner(zl, levels) if levels is not None else np.empty(0)
    if inner.size:
        cs = ax.contour(x, y, zl, levels=inner, colors="k", linewidths=0.7)
        ax.clabel(cs, cast(np.ndarray, cs.levels)[::2], inline=True, fontsize=7, fmt="%.3g")  # stubs: Iterable


def _curvature_2d(x: np.ndarray, y: np.ndarray, loss: np.ndarray | None, lambda_max: np.ndarray,
                  lambda_min: np.ndarray, ratio: np.ndarray, out: Path, formats: Sequence[str], title: str,
                  markers: Mapping[str, tuple[float, ...]]) -> list[Path]:
    """hessian_ratio (convexity map with loss contours), hessian_lambda_max and hessian_lambda_min heatmaps."""
    paths: list[Path] = []
    figures = {
        "hessian_ratio": "|lambda_min / lambda_max|",
        "hessian_lambda_max": "lambda_max",
        "hessian_lambda_min": "lambda_min",
    }
    for stem, label in figures.items():
        fig, ax = plt.subplots(figsize=(6.4, 5.0), layout="constrained")
        if stem == "hessian_ratio":
            _ratio_map(fig, ax, x, y, ratio, loss)
        else:
            values = lambda_max if stem == "hessian_lambda_max" else lambda_min
            _heatmap(fig, ax, x, y, common.masked_grid(values, auto=False), label, signed=stem == "hessian_lambda_min")
        common.mark(ax, markers)
        ax.set_xlabel("d1")
        ax.set_ylabel("d2")
        ax.set_title(_titled(title, label))
        paths += common.save(fig, out, stem, formats)
    return paths


def _curvature_1d(x: np.ndarray, loss: np.ndarray | None, lambda_max: np.ndarray, lambda_min: np.ndarray,
                  ratio: np.ndarray, out: Path, formats: Sequence[str], title: str,
                  markers: Mapping[str, tuple[float, ...]]) -> list[Path]:
    """hessian_curvature_1d: lambda_max and lambda_min (left) and |ratio| (twin right axis), loss in a panel above."""
    rows = 1 if loss is None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(6.4, 3.0 + 2.2 * rows), layout="constrained", sharex=True,
                             squeeze=False)
    ax = axes[-1][0]
    if loss is not None:
        top = axes[0][0]
        curve = common.prepare(loss)
        top.plot(x, curve, color="k", marker=".", label="loss")
        top.set_ylabel("loss")
        if not curve.count():
            common.no_data(top)
        common.mark(top, markers)
    lmax, lmin = common.prepare(lambda_max, auto=False), common.prepare(lambda_min, auto=False)
    r = common.prepare(np.abs(np.asarray(ratio, dtype=float)), auto=False)
    handles = ax.plot(x, lmax, color="C0", marker=".", label="lambda_max")
    handles += ax.plot(x, lmin, color="C3", marker=".", label="lambda_min")
    ax.axhline(0.0, color="gray", lw=0.6)
    twin = ax.twinx()
    handles += twin.plot(x, r, color="C2", marker=".", ls=":", label="|lambda_min / lambda_max|")
    twin.set_ylabel("|lambda_min / lambda_max|", color="C2")
    if not (lmax.count() or lmin.count() or r.count()):
        common.no_data(ax)
    common.limits(ax, x)
    common.mark(ax, markers)
    handles += [line for line in ax.get_lines() if line not in handles and not line.get_label().startswith("_")]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_xlabel("d1")
    ax.set_ylabel("eigenvalue")
    axes[0][0].set_title(title)
    return common.save(fig, out, "hessian_curvature_1d", formats)


def draw_curvature_maps(
    coords: tuple[np.ndarray, ...],
    loss: np.ndarray | None,
    lambda_max: np.ndarray,
    lambda_min: np.ndarray,
    ratio: np.ndarray,
    out_dir: str | Path,
    formats: Sequence[str] = ("png", "pdf"),
    title: str = "",
    markers: Mapping[str, tuple[float, ...]] | None = None,
) -> list[Path]:
    """Draw the Hessian's extreme eigenvalues over a swept 1D line or 2D plane into out_dir; return the files.

    2D (arrays [i, j] at (x[i], y[j])): hessian_ratio, hessian_lambda_max, hessian_lambda_min. 1D: hessian_curvature_1d.
    ratio is drawn as |ratio| (Li et al. 2018's convexity measure); loss may be None (no contours / no loss panel)."""
    if len(coords) not in (1, 2):
        raise ValueError(f"coords must hold 1 (line) or 2 (plane) arrays, got {len(coords)}")
    arrays = {"lambda_max": lambda_max, "lambda_min": lambda_min, "ratio": ratio}
    if loss is not None:
        arrays["loss"] = loss
    for name, values in arrays.items():
        common.check_shape(coords, values, name)
    markers = dict(markers or {})
    for name, point in markers.items():
        if len(point) != len(coords):
            raise ValueError(f"marker {name}: {len(point)} coordinate(s) for a {len(coords)}D grid")
    out = _out(out_dir)
    if len(coords) == 1:
        return _curvature_1d(np.asarray(coords[0], dtype=float), loss, lambda_max, lambda_min, ratio, out, formats,
                             title, markers)
    x, y = (np.asarray(c, dtype=float) for c in coords)
    return _curvature_2d(x, y, loss, lambda_max, lambda_min, ratio, out, formats, title, markers)

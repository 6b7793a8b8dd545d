"""Hessian figures (SLQ spectral density, top-k eigenvalues, curvature maps over a 1D line or 2D plane), drawn headless.

Reuses the shared cleaning and saving of engine.figures: NaN and -inf mean "not computed" and are left blank, +inf is
drawn at the largest finite value, and every figure is written once per format into out_dir.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.container import StemContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

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
) -> list[Path]:
    """Draw the SLQ eigenvalue density of the Hessian on a log y axis as hessian_density.fmt; return the files.

    Values below DENSITY_FLOOR * peak (zeros included) are raised to it; non-finite points are left blank."""
    x = np.asarray(grid, dtype=float)
    d = np.array(density, dtype=float)
    if x.ndim != 1 or d.shape != x.shape:
        raise ValueError(f"density of shape {d.shape} does not match grid of shape {x.shape}")
    missing = ~np.isfinite(x) | ~np.isfinite(d)
    positive = d[~missing & (d > 0)]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    if positive.size:
        d[~missing] = np.maximum(d[~missing], float(positive.max()) * DENSITY_FLOOR)
        ax.plot(np.ma.masked_array(x, mask=missing), np.ma.masked_array(d, mask=missing), color="C0", lw=1.2)
        ax.set_yscale("log")
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
) -> list[Path]:
    """Draw the top-k eigenvalues, largest first, as stems at ranks 1..k into hessian_eigenvalues.fmt; return the files.

    Non-finite eigenvalues are dropped; lambda_min, when given and finite, is a dashed horizontal line."""
    values = np.asarray(eigenvalues, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"eigenvalues must be a 1D array, got shape {values.shape}")
    ranked = np.sort(values[np.isfinite(values)])[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    handles: list[StemContainer | Line2D] = []
    if ranked.size:
        handles.append(ax.stem(np.arange(1, ranked.size + 1), ranked, label="top eigenvalues"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if lambda_min is not None and np.isfinite(lambda_min):
        handles.append(ax.axhline(float(lambda_min), color="C3", ls="--", lw=1.0, label="lambda_min"))
    if handles:
        ax.legend(handles=handles, loc="best", fontsize=8)
    else:
        common.no_data(ax)
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    return common.save(fig, _out(out_dir), "hessian_eigenvalues", formats)


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

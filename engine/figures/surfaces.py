"""Loss-landscape figures (1D lines, 2D contours, heatmaps, 3D surfaces) drawn headless from plain numpy arrays.

Values are cleaned before drawing: NaN and -inf mean "not computed" and are left blank, +inf and losses above the
clip are drawn at the clip, so a diverging corner never crashes a plot nor flattens the basin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 150
N_LEVELS = 20
CMAP = "viridis"


def _cap(arrays: Sequence[np.ndarray], clip: float | None, auto: bool = True) -> float | None:
    """The value drawn for +inf and anything above it: clip if given, else automatic (see `_prepare`), else None."""
    if clip is not None:
        return float(clip)
    finite = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    lo, med, hi = float(finite.min()), float(np.median(finite)), float(finite.max())
    return min(hi, lo + 5.0 * (med - lo)) if auto and med > lo else hi


def _prepare(arr: np.ndarray, clip: float | None = None, log_scale: bool = False,
             auto: bool = True) -> np.ma.MaskedArray:
    """Cleaned, still linear values: NaN/-inf masked, +inf and values above the cap set to the cap, <= 0 raised to the
    smallest positive value when log_scale. Automatic cap (clip None, auto): min(max, min + 5 * (median - min)) of the
    finite values, which keeps the basin's contrast when a far corner diverges; with auto False the cap is the max."""
    a = np.array(arr, dtype=float)
    missing = np.isnan(a) | np.isneginf(a)
    cap = _cap([a], clip, auto)
    if cap is None:
        missing |= np.isposinf(a)
    else:
        a[~missing] = np.minimum(a[~missing], cap)
    if log_scale and not missing.all():
        positive = a[~missing & (a > 0)]
        floor = float(positive.min()) if positive.size else 1.0
        a[~missing] = np.maximum(a[~missing], floor)
    a[missing] = np.nan
    return np.ma.masked_array(a, mask=missing)


def _grid(arr: np.ndarray, clip: float | None = None, log_scale: bool = False, auto: bool = True) -> np.ma.MaskedArray:
    """The Z actually handed to matplotlib: `_prepare`d, log10 if asked, transposed so Z[j, i] is at (x[i], y[j])."""
    z = _prepare(arr, clip, log_scale, auto)
    if log_scale:
        z = np.ma.masked_array(np.log10(z.filled(1.0)), mask=np.ma.getmaskarray(z))
    return z.T


def _levels(z: np.ma.MaskedArray) -> np.ndarray | None:
    """Round filled-contour levels covering the data; a constant surface gets one band around its value; None if empty.
    Contour lines use the levels strictly inside the data range, so matplotlib never finds "no contour levels"."""
    data = z.compressed()
    if data.size == 0:
        return None
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        pad = max(abs(lo) * 0.01, 1e-3)
        return np.array([lo - pad, lo + pad])
    return MaxNLocator(N_LEVELS).tick_values(lo, hi)


def _inner(z: np.ma.MaskedArray, levels: np.ndarray) -> np.ndarray:
    """The levels strictly between the data's min and max: the only ones contour lines can be drawn at."""
    return levels[(levels > z.min()) & (levels < z.max())]


def _limits(ax: Axes, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Frame the axes on the swept range (not matplotlib's default unit box when there is nothing to draw)."""
    if len(x) > 1 and x[0] != x[-1]:
        ax.set_xlim(float(np.min(x)), float(np.max(x)))
    if y is not None and len(y) > 1 and y[0] != y[-1]:
        ax.set_ylim(float(np.min(y)), float(np.max(y)))


def _no_data(ax: Axes, text: str = "no data") -> None:
    """Write a centred note on axes that have nothing to show (so the figure still exists)."""
    place = getattr(ax, "text2D", ax.text)
    place(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="gray")


def _mark(ax: Axes, markers: Mapping[str, tuple[float, ...]], z: np.ma.MaskedArray | None = None,
          coords: Sequence[np.ndarray] = ()) -> None:
    """Draw the named points: a dashed line in 1D, a star in 2D, a star on the surface (nearest grid value) in 3D."""
    for name, point in markers.items():
        if len(point) == 1:
            ax.axvline(point[0], color="k", ls="--", lw=0.8, label=name)
        elif z is None:
            ax.plot(point[0], point[1], "r*", ms=10, mec="k", label=name)
            ax.annotate(name, (point[0], point[1]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        else:
            i, j = (int(np.abs(np.asarray(c) - p).argmin()) for c, p in zip(coords, point))
            zz = z[j, i] if z.count() and not np.ma.is_masked(z[j, i]) else (z.min() if z.count() else 0.0)
            ax.scatter([point[0]], [point[1]], [float(zz)], color="r", marker="*", s=80, depthshade=False)
            ax.text(point[0], point[1], float(zz), f" {name}", fontsize=8)


def _save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write the figure once per format as out_dir/stem.fmt, close it, and return the paths."""
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt.lstrip('.').lower()}"
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    plt.close(fig)
    return paths


def _check(coords: Sequence[np.ndarray], values: np.ndarray, name: str) -> None:
    """Reject shapes that do not match the coordinates, with a message naming the metric."""
    shape = tuple(len(c) for c in coords)
    if len(coords) not in (1, 2) or np.shape(values) != shape:
        raise ValueError(f"{name}: values of shape {np.shape(values)} do not match coords of shape {shape}")


def _draw_1d(x: np.ndarray, metrics: Mapping[str, np.ndarray], out_dir: Path, title: str, label: str,
             log_scale: bool, clip: float | None, formats: Sequence[str],
             markers: Mapping[str, tuple[float, ...]]) -> list[Path]:
    """line.fmt (loss left, accuracy on a twin right axis) and <name>_line.fmt for every other metric."""
    paths: list[Path] = []
    figures = {"line": [m for m in ("loss", "accuracy") if m in metrics]}
    figures.update({f"{m}_line": [m] for m in metrics if m not in ("loss", "accuracy")})
    for stem, names in figures.items():
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        axes = [ax, ax.twinx()] if len(names) == 2 else [ax]
        handles, shown = [], 0
        for k, (name, axis) in enumerate(zip(names, axes)):
            is_loss = name == "loss"
            # no automatic cap on a line: it would flatten real values (an extrapolated interpolation, say)
            y = _prepare(metrics[name], clip if is_loss else None, log_scale and is_loss, auto=False)
            handles += axis.plot(x, y, color=f"C{k}", marker=".", label=name)
            axis.set_ylabel(name, color=f"C{k}")
            shown += y.count()
            if log_scale and is_loss and y.count():
                axis.set_yscale("log")
        if not shown:
            _no_data(ax)
            _limits(ax, x)
        _mark(ax, markers)
        handles += [line for line in ax.get_lines() if line not in handles]
        ax.legend(handles=handles, loc="best", fontsize=8)
        ax.set_xlabel(label)
        ax.set_title(title)
        paths += _save(fig, out_dir, stem, formats)
    return paths


def _draw_2d(coords: Sequence[np.ndarray], metrics: Mapping[str, np.ndarray], out_dir: Path, title: str,
             labels: Sequence[str], log_scale: bool, clip: float | None, formats: Sequence[str],
             markers: Mapping[str, tuple[float, ...]], path: np.ndarray | None = None) -> list[Path]:
    """contour/contourf/heatmap/surface3d for loss and <name>_heatmap for every other metric."""
    x, y = (np.asarray(c, dtype=float) for c in coords)
    paths: list[Path] = []
    for name, values in metrics.items():
        is_loss = name == "loss"
        use_log = log_scale and is_loss
        z = _grid(values, clip if is_loss else None, use_log, auto=is_loss)
        levels = _levels(z) if min(z.shape) >= 2 else None
        label = f"log10 {name}" if use_log else name
        kinds = ("contour", "contourf", "heatmap", "surface3d") if is_loss else ("heatmap",)
        for kind in kinds:
            stem = kind if is_loss else f"{name}_heatmap"
            fig = plt.figure(figsize=(6.4, 5.0), layout=None if kind == "surface3d" else "constrained")
            ax = fig.add_subplot(projection="3d" if kind == "surface3d" else None)
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
            ax.set_title(f"{title}\n{label}" if title else label)
            if levels is None:
                _no_data(ax)
            elif kind == "contour" and not _inner(z, levels).size:
                _no_data(ax, f"constant {name} = {10 ** levels.mean() if use_log else levels.mean():.4g}")
            elif kind == "contour":
                cs = ax.contour(x, y, z, levels=_inner(z, levels), cmap=CMAP, linewidths=0.9)
                fmt = (lambda v: f"{10 ** v:.3g}") if use_log else "%.3g"
                ax.clabel(cs, cs.levels[::2], inline=True, fontsize=7, fmt=fmt)
            elif kind == "contourf":
                fig.colorbar(ax.contourf(x, y, z, levels=levels, cmap=CMAP, extend="neither"), ax=ax, label=label)
            elif kind == "heatmap":
                mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap=CMAP, vmin=levels[0], vmax=levels[-1])
                fig.colorbar(mesh, ax=ax, label=label)
            else:
                xx, yy = np.meshgrid(x, y)
                ax.plot_surface(xx, yy, z.filled(np.nan), cmap=CMAP, vmin=levels[0], vmax=levels[-1],
                                rstride=1, cstride=1, linewidth=0, antialiased=False)
                ax.set_zlabel(label)
                ax.xaxis.set_major_locator(MaxNLocator(5))
                ax.yaxis.set_major_locator(MaxNLocator(5))
            if path is not None and kind != "surface3d":
                ax.plot(path[:, 0], path[:, 1], "-o", color="k", mfc="w", ms=3, lw=1, label="trajectory")
            _mark(ax, markers, z if kind == "surface3d" and levels is not None else None, (x, y))
            if kind != "heatmap" or levels is None:
                _limits(ax, x, y)
            paths += _save(fig, out_dir, stem, formats)
    return paths


def draw_surfaces(
    coords: Sequence[np.ndarray],
    metrics: Mapping[str, np.ndarray],
    out_dir: str | Path,
    *,
    title: str = "",
    axis_labels: Sequence[str] = ("d1", "d2"),
    log_scale: bool = False,
    clip: float | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    markers: Mapping[str, tuple[float, ...]] | None = None,
    path: np.ndarray | None = None,
) -> list[Path]:
    """Draw every figure of a 1D line or 2D plane into out_dir and return the files written.

    1D: line.fmt (loss + accuracy on a twin axis), <name>_line.fmt for other metrics. 2D: contour, contourf, heatmap,
    surface3d (loss), accuracy_heatmap and <name>_heatmap; `path` ([n, 2], a projected trajectory) is drawn over
    the 2D ones. Only loss is clipped (clip, else the automatic cap of
    `_prepare`) and log-scaled; NaN/-inf are blank, +inf is drawn at the cap (other metrics: at their max).
    """
    if len(coords) not in (1, 2):
        raise ValueError(f"coords must hold 1 (line) or 2 (plane) arrays, got {len(coords)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markers = dict(markers or {})
    for name, values in metrics.items():
        _check(coords, values, name)
    for name, point in markers.items():
        if len(point) != len(coords):
            raise ValueError(f"marker {name}: {len(point)} coordinate(s) for a {len(coords)}D surface")
    if len(coords) == 1:
        return _draw_1d(np.asarray(coords[0], dtype=float), metrics, out, title, axis_labels[0], log_scale, clip,
                        formats, markers)
    return _draw_2d(coords, metrics, out, title, axis_labels, log_scale, clip, formats, markers, path)


def draw_comparison(runs: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray]], out_path: str | Path, *,
                    metric: str = "loss", log_scale: bool = False, clip: float | None = None) -> Path:
    """Draw one metric of several runs side by side into out_path (format from its suffix) and return the path.

    2D: a row of filled contours sharing one colour scale and colorbar; 1D: every run as a line on one axes. The cap
    (clip, else automatic for loss) is computed over all runs together so the panels compare.
    """
    if not runs:
        raise ValueError("draw_comparison needs at least one run")
    dims = {len(coords) for coords, _ in runs.values()}
    if len(dims) != 1:
        raise ValueError(f"runs mix surfaces of different dimensions: {sorted(dims)}")
    for name, (coords, values) in runs.items():
        _check(coords, values, name)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cap = _cap([v for _, v in runs.values()], clip, auto=metric == "loss")
    label = f"log10 {metric}" if log_scale and dims == {2} else metric
    if dims == {1}:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        shown = 0
        for k, (name, (coords, values)) in enumerate(runs.items()):
            y = _prepare(values, cap, log_scale)
            shown += y.count()
            ax.plot(np.asarray(coords[0], dtype=float), y, color=f"C{k}", marker=".", label=name)
        if log_scale and shown:
            ax.set_yscale("log")
        if not shown:
            _no_data(ax)
        ax.set_xlabel("d1")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    else:
        grids = [_grid(values, cap, log_scale) for _, values in runs.values()]
        data = np.concatenate([g.compressed() for g in grids])
        levels = _levels(np.ma.masked_array(data))
        fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1.2, 4.0), layout="constrained",
                                 squeeze=False, sharey=True)
        filled = None
        axes[0][0].set_ylabel("d2")
        for ax, (name, (coords, _)), z in zip(axes[0], runs.items(), grids):
            ax.set_title(name)
            ax.set_xlabel("d1")
            if levels is None or not z.count() or min(z.shape) < 2:
                _no_data(ax)
                continue
            filled = ax.contourf(*(np.asarray(c, dtype=float) for c in coords), z, levels=levels, cmap=CMAP)
        if filled is not None:
            fig.colorbar(filled, ax=list(axes[0]), label=label)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path

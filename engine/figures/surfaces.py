"""Loss-landscape figures (1D lines, 2D contours, heatmaps, 3D surfaces) drawn headless from plain numpy arrays.

Values are cleaned before drawing: NaN and -inf mean "not computed" and are left blank, +inf and losses above the
clip are drawn at the clip, so a diverging corner never crashes a plot nor flattens the basin.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.artist import Artist
from matplotlib.ticker import MaxNLocator

from engine.figures import common
from engine.sources.losses import is_stderr, stderr_name

if TYPE_CHECKING:
    from mpl_toolkits.mplot3d import Axes3D


def _draw_1d(x: np.ndarray, metrics: Mapping[str, np.ndarray], out_dir: Path, title: str, label: str,
             log_scale: bool, clip: float | None, formats: Sequence[str],
             markers: Mapping[str, tuple[float, ...]]) -> list[Path]:
    """line.fmt (loss left, accuracy on a twin right axis) and <name>_line.fmt for every other metric; a metric with
    standard errors (<name>_stderr) is drawn with a band of +-BAND of them."""
    paths: list[Path] = []
    figures = {"line": [m for m in ("loss", "accuracy") if m in metrics]}
    figures.update({f"{m}_line": [m] for m in metrics if m not in ("loss", "accuracy") and not is_stderr(m)})
    for stem, names in figures.items():
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        axes = [ax, ax.twinx()] if len(names) == 2 else [ax]
        handles: list[Artist] = []
        shown = 0
        for k, (name, axis) in enumerate(zip(names, axes)):
            is_loss = name == "loss"
            # no automatic cap on a line: it would flatten real values (an extrapolated interpolation, say)
            y = common.prepare(metrics[name], clip if is_loss else None, log_scale and is_loss, auto=False)
            handles += axis.plot(x, y, color=f"C{k}", marker=".", label=name)
            se = metrics.get(stderr_name(name))
            if se is not None:
                raw = np.asarray(metrics[name], dtype=float)
                lo, hi = (common.prepare(raw + sign * BAND * np.asarray(se, dtype=float), clip if is_loss else None,
                                         log_scale and is_loss, auto=False) for sign in (-1, 1))
                handles.append(axis.fill_between(x, lo.filled(np.nan), hi.filled(np.nan), color=f"C{k}", alpha=0.25,
                                                 lw=0, label=f"{name} \u00b1{BAND:g} s.e."))
            axis.set_ylabel(name, color=f"C{k}")
            shown += y.count()
            if log_scale and is_loss and y.count():
                axis.set_yscale("log")
        if not shown:
            common.no_data(ax)
            common.limits(ax, x)
        common.mark(ax, markers)
        handles += [line for line in ax.get_lines() if line not in handles]
        ax.legend(handles=handles, loc="best", fontsize=8)
        ax.set_xlabel(label)
        ax.set_title(title)
        paths += common.save(fig, out_dir, stem, formats)
    return paths


BAND = 2.0  # the 1D line's band: +- this many standard errors (about 95% of the means a resample would give)
STDERR_MAP = "loss_stderr"  # the one standard-error map drawn on a plane (loss_stderr_heatmap)


def _draw_2d(coords: Sequence[np.ndarray], metrics: Mapping[str, np.ndarray], out_dir: Path, title: str,
             labels: Sequence[str], log_scale: bool, clip: float | None, formats: Sequence[str],
             markers: Mapping[str, tuple[float, ...]], path: np.ndarray | None = None, levels_kind: str = "log",
             n_levels: int = common.N_LEVELS) -> list[Path]:
    """contour/contourf/heatmap/surface3d for loss and <name>_heatmap for every other metric; the loss's bands
    follow levels_kind (on log10 values: linear), the other metrics' are linear. Of the standard errors, the loss's
    is drawn (loss_stderr_heatmap, capped and banded like the loss, since it grows with it far out)."""
    x, y = (np.asarray(c, dtype=float) for c in coords)
    paths: list[Path] = []
    for name, values in metrics.items():
        if is_stderr(name) and name != STDERR_MAP:
            continue
        is_loss = name == "loss"
        loss_like = is_loss or name == STDERR_MAP
        use_log = log_scale and is_loss
        z = common.masked_grid(values, clip if is_loss else None, use_log, auto=loss_like)
        bands = levels_kind if loss_like and not use_log else "linear"
        levels = common.contour_levels(z, bands, n_levels) if min(z.shape) >= 2 else None
        label = f"log10 {name}" if use_log else "standard error of the loss" if name == STDERR_MAP else name
        kinds = ("contour", "contourf", "heatmap", "surface3d") if is_loss else ("heatmap",)
        for kind in kinds:
            stem = kind if is_loss else f"{name}_heatmap"
            fig = plt.figure(figsize=(6.4, 5.0), layout=None if kind == "surface3d" else "constrained")
            ax = fig.add_subplot(projection="3d" if kind == "surface3d" else None)
            ax.set_xlabel(labels[0])
            ax.set_ylabel(labels[1])
            ax.set_title(f"{title}\n{label}" if title else label)
            if levels is None:
                common.no_data(ax)
            elif kind == "contour" and not common.inner(z, levels).size:
                common.no_data(ax, f"constant {name} = {10 ** levels.mean() if use_log else levels.mean():.4g}")
            elif kind == "contour":
                cs = ax.contour(x, y, z, levels=common.inner(z, levels), cmap=common.CMAP, linewidths=0.9,
                                norm=common.level_norm(levels))
                fmt = (lambda v: f"{10 ** v:.3g}") if use_log else "%.3g"
                ax.clabel(cs, cast(np.ndarray, cs.levels)[::2], inline=True, fontsize=7, fmt=fmt)  # stubs: Iterable
            elif kind == "contourf":
                filled = ax.contourf(x, y, z, levels=levels, cmap=common.CMAP, extend="neither",
                                     norm=common.level_norm(levels))
                fig.colorbar(filled, ax=ax, label=label, format=common.LEVEL_FORMAT)
            elif kind == "heatmap":
                mesh = ax.pcolormesh(x, y, z, shading="nearest", cmap=common.CMAP, norm=common.level_norm(levels))
                fig.colorbar(mesh, ax=ax, label=label, format=common.LEVEL_FORMAT)
            else:
                ax3d = cast("Axes3D", ax)  # projection="3d"
                surface3d(ax3d, x, y, values, levels, use_log, clip if is_loss else None, auto=is_loss)
                ax3d.set_zlabel(label)
                ax.xaxis.set_major_locator(MaxNLocator(5))
                ax.yaxis.set_major_locator(MaxNLocator(5))
            if path is not None and kind != "surface3d":
                ax.plot(path[:, 0], path[:, 1], "-o", color="k", mfc="w", ms=3, lw=1, label="trajectory")
            common.mark(ax, markers, z if kind == "surface3d" and levels is not None else None, (x, y))
            if kind != "heatmap" or levels is None:
                common.limits(ax, x, y)
            paths += common.save(fig, out_dir, stem, formats)
    return paths


def surface3d(ax: Axes3D, x: np.ndarray, y: np.ndarray, raw: np.ndarray, levels: np.ndarray, use_log: bool,
              clip: float | None, auto: bool) -> None:
    """The 3D surface on a mesh refined to about 200 points a side (bilinear in log space for positive values, then
    capped as the contours are), coloured by the contours' bands and with the z axis ending at the cap: the plateau
    where values are capped reads as a flat rim instead of a sawtooth of coarse cells."""
    fx, fy = refined(x), refined(y)
    fine = np.asarray(raw, dtype=float)
    positive = bool(np.all(fine[np.isfinite(fine)] > 0))
    grid = np.log(np.where(np.isfinite(fine), fine, np.nan)) if positive else np.where(np.isfinite(fine), fine, np.nan)
    grid = bilinear(x, y, grid, fx, fy)
    fine = np.exp(grid) if positive else grid
    cap = common.cap_value([raw], clip, auto)
    zf = common.masked_grid(np.minimum(fine, cap) if cap is not None else fine, None, use_log, auto=False)
    xx, yy = np.meshgrid(fx, fy)
    ax.plot_surface(xx, yy, zf.filled(np.nan), cmap=common.CMAP, norm=common.level_norm(levels), rstride=1,
                    cstride=1, linewidth=0, antialiased=False, shade=False)
    ax.set_zlim(float(levels[0]), float(levels[-1]))


def refined(c: np.ndarray, points: int = 200) -> np.ndarray:
    """The axis with each cell split so the whole has about `points` points (the grid's own points kept)."""
    split = max(1, -(-points // max(len(c) - 1, 1)))
    return np.concatenate([np.linspace(a, b, split, endpoint=False) for a, b in itertools.pairwise(c)] + [c[-1:]])


def bilinear(x: np.ndarray, y: np.ndarray, values: np.ndarray, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """values[i, j] at (x[i], y[j]) interpolated onto (fx, fy), separably (one axis, then the other); NaN spreads
    to the cells it touches, so nothing is drawn where nothing was computed."""
    rows = np.stack([np.interp(fy, y, row) for row in values])
    return np.stack([np.interp(fx, x, col) for col in rows.T], axis=1)


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
    levels: str = "log",
    n_levels: int = common.N_LEVELS,
) -> list[Path]:
    """Draw every figure of a 1D line or 2D plane into out_dir and return the files written.

    1D: line.fmt (loss + accuracy on a twin axis), <name>_line.fmt for other metrics, each with a band of +-2
    standard errors where metrics hold its <name>_stderr. 2D: contour, contourf, heatmap, surface3d (loss),
    accuracy_heatmap, <name>_heatmap and loss_stderr_heatmap; `path` ([n, 2], a projected trajectory) is drawn over
    the 2D ones. Only loss is clipped (clip, else the automatic cap of
    `common.prepare`) and log-scaled; NaN/-inf are blank, +inf is drawn at the cap (other metrics: at their max).
    """
    if len(coords) not in (1, 2):
        raise ValueError(f"coords must hold 1 (line) or 2 (plane) arrays, got {len(coords)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markers = dict(markers or {})
    for name, values in metrics.items():
        common.check_shape(coords, values, name)
    for name, point in markers.items():
        if len(point) != len(coords):
            raise ValueError(f"marker {name}: {len(point)} coordinate(s) for a {len(coords)}D surface")
    if len(coords) == 1:
        return _draw_1d(np.asarray(coords[0], dtype=float), metrics, out, title, axis_labels[0], log_scale, clip,
                        formats, markers)
    return _draw_2d(coords, metrics, out, title, axis_labels, log_scale, clip, formats, markers, path, levels,
                    n_levels)

"""What every figure shares: value cleaning (NaN and -inf blank, +inf and values above the clip drawn at the cap),
contour levels, axis limits, model markers, the empty-panel notice and saving in every format, headless."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from mpl_toolkits.mplot3d import Axes3D

DPI = 150
N_LEVELS = 20
CMAP = "viridis"
LEVEL_FORMAT = "%.3g"  # colour-bar labels of the contour bands


def cap_value(arrays: Sequence[np.ndarray], clip: float | None, auto: bool = True) -> float | None:
    """The value drawn for +inf and anything above it: clip if given, else automatic (see `prepare`), else None."""
    if clip is not None:
        return float(clip)
    finite = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    lo, med, hi = float(finite.min()), float(np.median(finite)), float(finite.max())
    return min(hi, lo + 5.0 * (med - lo)) if auto and med > lo else hi


def prepare(arr: np.ndarray, clip: float | None = None, log_scale: bool = False,
             auto: bool = True) -> np.ma.MaskedArray:
    """Cleaned, still linear values: NaN/-inf masked, +inf and values above the cap set to the cap, <= 0 raised to the
    smallest positive value when log_scale. Automatic cap (clip None, auto): min(max, min + 5 * (median - min)) of the
    finite values, which keeps the basin's contrast when a far corner diverges; with auto False the cap is the max."""
    a = np.array(arr, dtype=float)
    missing = np.isnan(a) | np.isneginf(a)
    cap = cap_value([a], clip, auto)
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


def masked_grid(arr: np.ndarray, clip: float | None = None, log_scale: bool = False,
                auto: bool = True) -> np.ma.MaskedArray:
    """The Z actually handed to matplotlib: `prepare`d, log10 if asked, transposed so Z[j, i] is at (x[i], y[j])."""
    z = prepare(arr, clip, log_scale, auto)
    if log_scale:
        z = np.ma.masked_array(np.log10(z.filled(1.0)), mask=np.ma.getmaskarray(z))
    return z.T


def contour_levels(z: np.ma.MaskedArray, kind: str = "linear", n: int = N_LEVELS) -> np.ndarray | None:
    """Filled-contour levels covering the data, None if empty; a constant surface gets one band around its value.

    linear: round, evenly spaced; log: geometrically spaced from the minimum to the maximum (positive data only,
    else linear), so a basin near zero gets as many bands as the walls around it, as in Li et al.'s figures;
    quantile: equal numbers of grid points per band. Contour lines use the levels strictly inside the range."""
    data = z.compressed()
    if data.size == 0:
        return None
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        pad = max(abs(lo) * 0.01, 1e-3)
        return np.array([lo - pad, lo + pad])
    if kind == "log" and lo > 0:
        return covering(np.geomspace(lo, hi, n + 1), lo, hi)
    if kind == "quantile":
        levels = np.unique(np.quantile(data, np.linspace(0.0, 1.0, n + 1)))
        if levels.size >= 3:
            return covering(levels, lo, hi)
    return cast(np.ndarray, MaxNLocator(n).tick_values(lo, hi))  # an ndarray; the stubs say Sequence[float]


def covering(levels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Levels rounded to 3 significant digits inside, the ends widened a hair past the data's range so that its
    minimum and maximum fall inside a band (contourf leaves values outside its levels blank)."""
    inside = np.array([float(f"{v:.3g}") for v in levels[1:-1]])
    out = np.unique(np.concatenate([[lo - 1e-9 * max(abs(lo), 1e-12)], inside, [hi + 1e-9 * max(abs(hi), 1e-12)]]))
    return out[(out >= out[0]) & (out <= out[-1])]


def level_norm(levels: np.ndarray) -> BoundaryNorm:
    """The colour of each band between levels, shared by contours, heatmaps and the 3D surface of one figure set."""
    return BoundaryNorm(levels, ncolors=plt.get_cmap(CMAP).N, clip=True)


def inner(z: np.ma.MaskedArray, levels: np.ndarray) -> np.ndarray:
    """The levels strictly between the data's min and max: the only ones contour lines can be drawn at."""
    return levels[(levels > z.min()) & (levels < z.max())]


def limits(ax: Axes, x: np.ndarray, y: np.ndarray | None = None) -> None:
    """Frame the axes on the swept range (not matplotlib's default unit box when there is nothing to draw)."""
    if len(x) > 1 and x[0] != x[-1]:
        ax.set_xlim(float(np.min(x)), float(np.max(x)))
    if y is not None and len(y) > 1 and y[0] != y[-1]:
        ax.set_ylim(float(np.min(y)), float(np.max(y)))


def no_data(ax: Axes, text: str = "no data") -> None:
    """Write a centred note on axes that have nothing to show (so the figure still exists)."""
    place = getattr(ax, "text2D", ax.text)
    place(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="gray")


def mark(ax: Axes, markers: Mapping[str, tuple[float, ...]], z: np.ma.MaskedArray | None = None,
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
            ax3d = cast("Axes3D", ax)  # z is given for 3D axes only
            ax3d.scatter([point[0]], [point[1]], [float(zz)], color="r", marker="*", s=80, depthshade=False)
            ax3d.text(point[0], point[1], float(zz), f" {name}", fontsize=8)


def save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """Write the figure once per format as out_dir/stem.fmt, close it, and return the paths."""
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt.lstrip('.').lower()}"
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    plt.close(fig)
    return paths


def check_shape(coords: Sequence[np.ndarray], values: np.ndarray, name: str) -> None:
    """Reject shapes that do not match the coordinates, with a message naming the metric."""
    shape = tuple(len(c) for c in coords)
    if len(coords) not in (1, 2) or np.shape(values) != shape:
        raise ValueError(f"{name}: values of shape {np.shape(values)} do not match coords of shape {shape}")

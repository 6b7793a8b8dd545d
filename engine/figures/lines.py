"""Figures of an N-line store (direction=random grid=line direction.count=N): the N loss curves on one plot with
their median and interquartile band across lines at each distance, and the histogram of the basin radii on each
side (summary.json's radius, recomputed from the store so `landscape-plot` needs nothing else)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from engine.config.schema import PlotConfig
from engine.figures.common import prepare, save
from engine.store.lines import side_radius
from engine.store.read import Surface


def radii(surface: Surface, rise: float) -> dict[str, np.ndarray]:
    """Every line's basin radius on each side (inf: open, beyond the grid; nan: not computed)."""
    loss, x = surface.metrics["loss"], surface.coords[1]
    centre = int(np.argmin(np.abs(x)))
    return {name: np.array([side_radius(x, row, None, centre, step, rise)[0] for row in loss])
            for name, step in (("plus", 1), ("minus", -1))}


def draw_lines(surface: Surface, out_dir: str | Path, plot: PlotConfig, title: str, rise: float) -> list[Path]:
    """lines.<fmt> (the curves, median and band) and radius_histogram.<fmt> into out_dir; returns the files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loss, x = surface.metrics["loss"], surface.coords[1]
    shown = np.where(np.isfinite(loss), loss, np.nan)  # the curves as computed: a wall leaves the frame at the cap
    cap = float(np.nanmax(np.ma.filled(prepare(loss, plot.clip, plot.log_scale), np.nan)))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in shown:
        ax.plot(x, row, color="tab:blue", alpha=max(0.08, min(0.6, 4 / len(shown))), lw=0.8)
    with warnings.catch_warnings():  # a distance no line has computed yet (a partial run) is NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        q1, med, q3 = np.nanpercentile(shown, [25, 50, 75], axis=0)
    ax.fill_between(x, q1, q3, color="tab:orange", alpha=0.3, label="quartiles across lines")
    ax.plot(x, med, color="tab:red", lw=2, label="median across lines")
    ax.axhline(float(loss[0, int(np.argmin(np.abs(x)))]) + rise, color="k", ls="--", lw=0.8,
               label=f"centre + {rise:g} (basin radius)")
    if plot.log_scale:
        ax.set_yscale("log")
    low = float(np.nanmin(shown))
    ax.set_ylim(low / 1.1 if plot.log_scale else low - 0.03 * (cap - low), cap * 1.1 if plot.log_scale else
                cap + 0.03 * (cap - low))  # the walls beyond plot.clip (or the automatic cap) run off the top
    ax.set(xlabel="distance along each filter-normalized direction", ylabel="loss",
           title=f"{title}\n{len(loss)} random lines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = save(fig, out, "lines", plot.formats)
    fig, ax = plt.subplots(figsize=(6, 4))
    sides = radii(surface, rise)
    closed = [v[np.isfinite(v)] for v in sides.values()]
    if any(c.size for c in closed):
        bins = [float(b) for b in np.histogram_bin_edges(np.concatenate(closed), bins=max(5, min(30, len(loss) // 2)))]
        ax.hist(closed, bins=bins, stacked=True, label=[f"{n} side" for n in sides], color=["tab:blue", "tab:green"])
        ax.axvline(float(np.median(np.concatenate(closed))), color="tab:red", label="median (closed sides)")
    opened = sum(int(np.isinf(v).sum()) for v in sides.values())
    ax.set(xlabel=f"basin radius (loss <= centre + {rise:g})", ylabel="sides",
           title=f"{title}\n{opened} side(s) open beyond the grid" if opened else title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return paths + save(fig, out, "radius_histogram", plot.formats)

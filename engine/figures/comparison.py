"""The comparison figure of several runs: one metric side by side on one colour scale (2D) or as lines on one
axes (1D), for `landscape-compare` and the multirun callback."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from engine.figures import common


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
        common.check_shape(coords, values, name)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cap = common.cap_value([v for _, v in runs.values()], clip, auto=metric == "loss")
    label = f"log10 {metric}" if log_scale and dims == {2} else metric
    if dims == {1}:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        shown = 0
        for k, (name, (coords, values)) in enumerate(runs.items()):
            y = common.prepare(values, cap, log_scale)
            shown += y.count()
            ax.plot(np.asarray(coords[0], dtype=float), y, color=f"C{k}", marker=".", label=name)
        if log_scale and shown:
            ax.set_yscale("log")
        if not shown:
            common.no_data(ax)
        ax.set_xlabel("d1")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    else:
        grids = [common.masked_grid(values, cap, log_scale) for _, values in runs.values()]
        data = np.concatenate([g.compressed() for g in grids])
        levels = common.contour_levels(np.ma.masked_array(data), "log" if metric == "loss" and not log_scale else
                                       "linear")
        fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs) + 1.2, 4.0), layout="constrained",
                                 squeeze=False, sharey=True)
        filled = None
        axes[0][0].set_ylabel("d2")
        for ax, (name, (coords, _)), z in zip(axes[0], runs.items(), grids):
            ax.set_title(name)
            ax.set_xlabel("d1")
            if levels is None or not z.count() or min(z.shape) < 2:
                common.no_data(ax)
                continue
            filled = ax.contourf(*(np.asarray(c, dtype=float) for c in coords), z, levels=levels, cmap=common.CMAP,
                                 norm=common.level_norm(levels))
        if filled is not None:
            fig.colorbar(filled, ax=list(axes[0]), label=label, format=common.LEVEL_FORMAT)
    fig.savefig(path, dpi=common.DPI)
    plt.close(fig)
    return path

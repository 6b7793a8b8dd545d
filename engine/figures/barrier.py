"""The barrier figure of a path run (interpolation or curve): each metric with standard errors along t, the straight
line between its values at A (t = 0) and B (t = 1), and the barrier (Frankle et al. 2020) marked at its t with its
standard error, so the rise above the line is read off the picture."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from engine.figures.common import save
from engine.store.barrier import barriers
from engine.store.read import Surface

BAND = 2.0  # the band is +-BAND standard errors, as on the line figure


def draw_barrier(surface: Surface, out_dir: Path, title: str, label: str, formats: Sequence[str]) -> list[Path]:
    """out_dir/barrier.<fmt>: one panel per metric with a barrier (loss, accuracy); nothing when t = 0 or t = 1 is
    not a computed grid point."""
    found = {m: b for m, b in barriers(surface).items() if b["value"] is not None}
    if not found:
        return []
    t = np.asarray(surface.coords[0], dtype=np.float64)
    fig, axes = plt.subplots(1, len(found), figsize=(5.2 * len(found), 4.2), squeeze=False)
    for ax, (metric, b) in zip(axes[0], found.items()):
        values = np.asarray(surface.metrics[metric], dtype=np.float64)
        ax.plot(t, values, "-o", ms=3, color="C0", label=metric)
        se = surface.stderr(metric)
        if se is not None:
            ax.fill_between(t, values - BAND * se, values + BAND * se, color="C0", alpha=0.2,
                            label=f"±{BAND:g} s.e.")
        ax.plot([0.0, 1.0], [b["start"], b["end"]], "--", color="k", lw=1, label="line from A to B")
        ax.annotate("", xy=(b["t"], b["at_t"]), xytext=(b["t"], b["line_at_t"]),
                    arrowprops={"arrowstyle": "<->", "color": "C3", "lw": 1.5})
        error = "" if b["stderr"] is None else f" ± {b['stderr']:.2g}"
        word = "drop" if metric == "accuracy" else "barrier"
        ax.plot([], [], color="C3", label=f"{word} {b['value']:.3g}{error} at t = {b['t']:.2g}")
        ax.set_xlabel(label)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} {word}" + ("" if b["significant"] is None else
                                            " (significant)" if b["significant"] else " (not significant)"))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out_dir, "barrier", formats)

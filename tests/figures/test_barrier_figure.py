"""The barrier figure of a path run, drawn from a hand-made profile: one panel per metric with a barrier, and nothing
when t = 0 or t = 1 is not on the grid."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from engine.figures.barrier import draw_barrier
from engine.store.read import Surface


def path_surface(t: np.ndarray) -> Surface:
    metrics = {"loss": 1 + t * (1 - t), "loss_stderr": np.full_like(t, 0.01), "accuracy": 0.9 - 0.2 * t * (1 - t),
               "accuracy_stderr": np.full_like(t, 0.02)}
    return Surface((t,), metrics, np.ones(1, bool), {"config": {"direction": {"kind": "curve"}}})


def test_barrier_figure_has_a_panel_per_metric(tmp_path):
    files = draw_barrier(path_surface(np.linspace(0, 1, 11)), tmp_path, "a path", "t", ["png"])
    assert files == [tmp_path / "barrier.png"]
    height, width, _ = matplotlib.image.imread(files[0]).shape
    assert width > 1.8 * height  # two panels side by side: loss and accuracy


def test_no_figure_without_both_ends(tmp_path):
    assert draw_barrier(path_surface(np.linspace(0.1, 0.9, 5)), tmp_path, "a path", "t", ["png"]) == []

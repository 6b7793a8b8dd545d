"""Fixtures of the figure tests: spies on what reaches matplotlib's axes and on every figure handed to save."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import engine.figures.common
from helpers import PLOT_X, PLOT_Y


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record the Z arrays (and results) of the PLOT_X x PLOT_Y grid that reach Axes.contour / contourf /
    pcolormesh."""
    calls: dict[str, list] = {"contour": [], "contourf": [], "pcolormesh": []}
    for name in calls:
        original = getattr(Axes, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            result = _original(self, *args, **kwargs)
            if len(args) == 3 and np.shape(args[2]) == (len(PLOT_Y), len(PLOT_X)):  # not a colorbar's own pcolormesh
                calls[_name].append((np.ma.array(args[2], copy=True), result))
            return result

        monkeypatch.setattr(Axes, name, spy)
    return calls


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """Record every figure handed to save, by file stem (the Figure stays inspectable after it is closed)."""
    seen: dict[str, Figure] = {}
    original = engine.figures.common.save

    def spy(fig: Figure, out_dir: Path, stem: str, formats: list[str]) -> list[Path]:
        seen[stem] = fig
        return original(fig, out_dir, stem, formats)

    monkeypatch.setattr(engine.figures.common, "save", spy)
    return seen

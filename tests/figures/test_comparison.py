"""engine.figures.comparison: several runs side by side on one colour scale."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from engine.figures.comparison import draw_comparison
from helpers import PLOT_X as X
from helpers import PLOT_Y as Y
from helpers import bowl


def test_comparison_2d_and_1d(tmp_path: Path, recorded: dict[str, list]) -> None:
    a, b = bowl(), 3 * bowl()
    b[0, 0] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out2 = draw_comparison({"sgd": ([X, Y], a), "adam": ([X, Y], b)}, tmp_path / "cmp" / "loss2d.png")
        out1 = draw_comparison({"sgd": ([X], a[:, 3]), "adam": ([X], b[:, 3])}, tmp_path / "loss1d.pdf",
                               log_scale=True)
    assert out2 == tmp_path / "cmp" / "loss2d.png" and out2.stat().st_size > 0
    assert mpimg.imread(out2).shape[1] > mpimg.imread(out2).shape[0]  # a row of panels
    assert out1.read_bytes().startswith(b"%PDF")
    first, second = (cs for _, cs in recorded["contourf"])
    np.testing.assert_array_equal(first.levels, second.levels)  # one shared colour scale
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="dimensions"):
        draw_comparison({"a": ([X, Y], a), "b": ([X], a[:, 0])}, tmp_path / "bad.png")

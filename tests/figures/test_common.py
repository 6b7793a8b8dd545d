"""engine.figures.common: cleaning a surface before it is drawn (automatic clipping)."""

from __future__ import annotations

import numpy as np

from engine.figures.common import prepare
from helpers import PLOT_X as X
from helpers import bowl


def test_automatic_clip_keeps_basin_when_a_corner_diverges() -> None:
    clean = bowl(X, X)
    np.testing.assert_allclose(prepare(clean), clean)  # nothing diverges: nothing clipped
    loss = clean.copy()
    loss[-2:, -2:] = np.inf
    loss[0, -1] = 1e6
    p = prepare(loss)
    assert clean.max() <= p.max() < 10  # the basin is untouched, the diverging corner is capped near it
    assert p[-1, -1] == p.max() and p[0, -1] == p.max()
    kept = np.isfinite(loss) & (loss < 1e6)
    np.testing.assert_allclose(p[kept], clean[kept])

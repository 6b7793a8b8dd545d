"""summary.json numbers on surfaces with known answers: a bowl, a saddle, a partial store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.store.assemble import assemble, basin_width, convexity, local_minima, summarize
from engine.store.read import Surface


def _surface(f, n=(21, 21), done=None) -> Surface:
    x, y = np.linspace(-1, 1, n[0]), np.linspace(-1, 1, n[1])
    loss = f(*np.meshgrid(x, y, indexing="ij")).astype(np.float32)
    done = np.ones((3, 3), bool) if done is None else done
    return Surface((x, y), {"loss": loss, "accuracy": np.ones_like(loss)}, done, {})


def test_bowl_center_minimum_basin_and_convexity():
    s = summarize(_surface(lambda x, y: 1 + x**2 + 4 * (y - 0.2) ** 2), basin_rise=0.25)
    assert s["complete"] and s["missing_tiles"] == []
    assert s["center"]["coords"] == [0.0, 0.0] and s["center"]["loss"] == pytest.approx(1.16, rel=1e-6)
    assert s["minimum"]["coords"] == pytest.approx([0.0, 0.2]) and s["minimum"]["loss"] == pytest.approx(1.0)
    # along x through the center: x^2 <= 0.25 -> |x| <= 0.5, width 1.0 on a 0.1 grid
    assert s["basin"]["x"]["width"] == pytest.approx(1.0) and not s["basin"]["x"]["open"]
    # along y through x=0: 4(y-0.2)^2 <= 0.41 -> y in [-0.12, 0.52]: grid points -0.1 .. 0.5
    assert (s["basin"]["y"]["from"], s["basin"]["y"]["to"]) == pytest.approx((-0.1, 0.5))
    assert s["convexity"]["nonconvex_fraction"] == 0.0 and s["convexity"]["local_minima"] == 1


def test_saddle_is_nonconvex_everywhere():
    c = convexity(*((lambda s: (s.metrics["loss"], s.coords))(_surface(lambda x, y: x**2 - y**2))))
    assert c["nonconvex_fraction"] == 1.0 and c["mean_abs_eig_ratio"] == pytest.approx(1.0, rel=1e-3)


def test_open_basin_and_1d_line():
    x = np.linspace(-1, 1, 11)
    line = (x**2).astype(np.float32)
    w = basin_width(line, (x,), (5,), 0, rise=5.0)
    assert w["open"] and w["width"] == pytest.approx(2.0)
    c = convexity(line, (x,))
    assert c["nonconvex_fraction"] == 0.0 and c["local_minima"] == 1
    assert local_minima(np.array([3.0, 1.0, 2.0, 0.5, 4.0])) == 2


def test_partial_and_nonfinite_surface(tmp_path):
    done = np.ones((3, 3), bool)
    done[2, 1] = False
    surf = _surface(lambda x, y: x**2 + y**2, done=done)
    surf.metrics["loss"][0, 0] = np.inf
    surf.metrics["loss"][20, 10] = np.nan
    s = summarize(surf)
    assert not s["complete"] and s["missing_tiles"] == [[2, 1]]
    assert s["nonfinite_points"] == 1 and s["points_computed"] == 21 * 21 - 1
    json.dumps(s, allow_nan=False)


def test_assemble_writes_summary_json(trained_run, tmp_path):
    _, _, result = trained_run
    summary = assemble(result.store, out=tmp_path / "s.json")
    on_disk = json.loads((tmp_path / "s.json").read_text())
    assert on_disk == json.loads(json.dumps(summary)) and on_disk["complete"]
    assert 0.0 <= on_disk["center"]["accuracy"] <= 1.0

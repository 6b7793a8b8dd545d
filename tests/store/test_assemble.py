"""summary.json numbers on surfaces with known answers: a bowl, a saddle, a partial store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.store.assemble import CORRELATED, assemble, basin_width, convexity, local_minima, summarize
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


def _with_stderr(surface: Surface, loss_se: np.ndarray) -> Surface:
    """The surface with loss_stderr and a constant accuracy_stderr, as a store of a loss with per-item values."""
    metrics = {**surface.metrics, "loss_stderr": loss_se.astype(np.float32),
               "accuracy_stderr": np.full_like(loss_se, 0.01, dtype=np.float32)}
    return Surface(surface.coords, metrics, surface.done, surface.attrs)


def test_error_bars_basin_depth_and_minimum_vs_centre_on_a_known_bowl():
    """Bowl 1 + x^2 + 4 (y - 0.2)^2 on [-1, 1]^2 with loss_stderr 0.05 + 0.05 * (loss - 1): the rim's lowest points
    are (+-1, 0.2) (loss 2, se 0.1; the first is reported), 0.84 above the centre (1.16, se 0.058); the minimum
    (0, 0.2) lies 0.16 below the centre, with standard error hypot(0.05, 0.058) and z = -2.09: significant."""
    bowl = _surface(lambda x, y: 1 + x**2 + 4 * (y - 0.2) ** 2)
    s = summarize(_with_stderr(bowl, 0.05 + 0.05 * (bowl.metrics["loss"] - 1)))
    assert set(s["center"]) == {"coords", "loss", "accuracy"}  # standard errors are not metrics of their own
    bars = s["error_bars"]
    assert bars["metrics"] == ["loss", "accuracy"] and "conservative" in s["minimum_vs_centre"]["note"]
    assert bars["center"]["loss"] == pytest.approx(0.058, rel=1e-5) and bars["center"]["accuracy"] == pytest.approx(
        0.01)
    assert bars["minimum"]["loss"] == pytest.approx(0.05, rel=1e-5)
    assert bars["rim"]["coords"] == pytest.approx([-1.0, 0.2]) and bars["rim"]["loss"] == pytest.approx(2.0)
    assert bars["rim"]["loss_stderr"] == pytest.approx(0.1, rel=1e-5)
    assert s["basin_depth_se"] == pytest.approx(0.84 / np.hypot(0.1, 0.058), rel=1e-5)
    versus = s["minimum_vs_centre"]
    assert versus["difference"] == pytest.approx(-0.16, rel=1e-5)
    assert versus["stderr"] == pytest.approx(np.hypot(0.05, 0.058), rel=1e-5)
    assert versus["z"] == pytest.approx(-0.16 / np.hypot(0.05, 0.058), rel=1e-5) and versus["significant"]
    json.dumps(s, allow_nan=False)


def test_minimum_at_the_centre_is_not_significant_and_a_line_has_its_ends_as_rim():
    x = np.linspace(-1, 1, 11)
    loss = (0.5 + x**2).astype(np.float32)
    line = Surface((x,), {"loss": loss, "loss_stderr": np.full_like(loss, 0.2)}, np.ones(3, bool), {})
    s = summarize(line)
    assert s["minimum_vs_centre"] == {"difference": 0.0, "stderr": pytest.approx(np.hypot(0.2, 0.2)), "z": 0.0,
                                      "significant": False, "note": CORRELATED}
    assert s["error_bars"]["rim"]["coords"] in ([-1.0], [1.0])
    assert s["basin_depth_se"] == pytest.approx(1.0 / np.hypot(0.2, 0.2), rel=1e-5)
    no_spread = Surface((x,), {"loss": loss, "loss_stderr": np.zeros_like(loss)}, np.ones(3, bool), {})
    assert summarize(no_spread)["minimum_vs_centre"]["z"] is None and summarize(no_spread)["basin_depth_se"] is None


def test_a_surface_without_standard_errors_says_so_in_one_field():
    s = summarize(_surface(lambda x, y: x**2 + y**2))
    assert s["error_bars"] == "no per-item values: no error bars"
    assert s["basin_depth_se"] is None and s["minimum_vs_centre"] is None

"""grid.x=auto / grid.y=auto: the bisection finds an analytic wall to RTOL, the range is rounded up to 3 significant
digits, a loss that never rises is refused in one line, and a whole run on a quadratic bowl (a custom model and loss
whose loss along a filter-normalized direction is L0 + x^2 |theta*|^2) sweeps the analytic range, stored and in
summary.json, next to a fixed axis that keeps its range."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import engine
from engine.config.schema import config_hash, result_config
from engine.core.errors import UserError
from engine.store.read import read_surface
from engine.sweep.autorange import RTOL, axis_range, round_up, target_loss, wall_distance
from helpers import make_cfg

L0 = 0.2  # the bowl's loss at theta*


class Bowl(nn.Module):
    """A bias-free linear layer whose loss (bowl_loss) is L0 + |W - W*|^2, W* a buffer the sweep never moves."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("centre", self.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def bowl_loss(model: Bowl, batch):
    """The summed bowl loss over the batch's items (every item sees the same value)."""
    n = batch[0].shape[0]
    return (((model.weight - model.centre) ** 2).sum() + L0) * n, n


def test_wall_of_a_parabola_to_rtol_and_the_range_rounded_up():
    for a in (1e-3, 0.37, 50.0):
        r = math.sqrt(1.8 / a)
        hi, evaluations = wall_distance(lambda x, a=a: L0 + a * x * x, L0 + 1.8, "d1")
        assert r <= hi <= r * (1 + RTOL) and evaluations < 40
    assert (round_up(0.70712), round_up(3.0), round_up(1234.5), round_up(0.0012301)) == (0.708, 3.0, 1240.0, 0.00124)
    assert target_loss(0.2, 10, 0.5) == 2.0 and target_loss(0.01, 10, 0.5) == 0.51
    nan_wall, _ = wall_distance(lambda x: math.nan if x > 0.6 else 0.0, 1.0, "d1")  # non-finite: a wall
    assert 0.6 <= nan_wall <= 0.6 * (1 + RTOL)
    asymmetric = axis_range("x", [0], 1, lambda c: float(c[0] ** 2 if c[0] > 0 else 4 * c[0] ** 2), 1.0)
    assert asymmetric.range == [-1.0, 1.0] and asymmetric.record()["minus"][0] == pytest.approx(0.5, rel=RTOL)


def test_a_loss_that_never_rises_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"stays below 2 out to distance 4096 along \+d1; lower grid.auto_rise") as e:
        wall_distance(lambda x: L0, 2.0, "+d1")
    assert "\n" not in str(e.value)


def test_quadratic_bowl_sweeps_the_analytic_range(tmp_path):
    model = Bowl()
    data = (torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(16))
    surface = engine.landscape(model, data, loss=bowl_loss, log=False, **{
        "grid.x": "auto", "grid.y": [-0.5, 0.5], "grid.resolution": (9, 5), "out_dir": str(tmp_path),
        "summary.epsilon": None, "summary.adaptive_radius": None, "summary.adaptive_average_radius": None,
        "plot.enabled": False, "eval.points_per_pass": 1})
    # filter normalization gives each row of d the norm of that row of W*: |d|^2 = |W*|^2 along every direction
    r = math.sqrt((target_loss(L0, 10.0, 0.5) - L0) / float((model.weight.detach() ** 2).sum()))
    store = read_surface(surface.attrs["store"])
    chosen = store.attrs["auto_range"]
    assert chosen["centre_loss"] == pytest.approx(L0, rel=1e-6) and chosen["target"] == pytest.approx(10 * L0)
    for wall in chosen["x"]["plus"] + chosen["x"]["minus"]:
        assert r * (1 - 1e-5) <= wall <= r * (1 + RTOL) * (1 + 1e-5)
    reach = chosen["x"]["range"][1]
    assert reach == round_up(max(chosen["x"]["plus"] + chosen["x"]["minus"])) and r <= reach <= round_up(r * 1.001)
    np.testing.assert_array_equal(store.coords[0], np.linspace(-reach, reach, 9))
    np.testing.assert_array_equal(store.coords[1], np.linspace(-0.5, 0.5, 5))  # a fixed range stays as it is
    edge = store.metrics["loss"][[0, -1], 2]  # at the walls the loss is L0 + reach^2 |W*|^2, just above 10 x L0
    np.testing.assert_allclose(edge, L0 + (reach / r) ** 2 * (10 * L0 - L0), rtol=1e-5)
    summary = json.loads((tmp_path / store.attrs["config"]["name"] / "summary.json").read_text())
    assert summary["auto_range"] == chosen
    lines = engine.landscape(model, data, loss=bowl_loss, log=False, **{  # 3 lines: each has the same wall
        "name": "bowl-lines", "grid": "line", "grid.x": "auto", "grid.resolution": [5], "direction.count": 3,
        "out_dir": str(tmp_path),
        "summary.epsilon": None, "summary.adaptive_radius": None, "summary.adaptive_average_radius": None,
        "plot.enabled": False})
    assert lines.loss.dims == ("direction", "x") and lines.attrs["auto_range"]["x"]["range"] == [-reach, reach]
    assert len(lines.attrs["auto_range"]["x"]["plus"]) == 3


def test_fixed_ranges_hash_as_before_and_auto_is_refused_where_it_cannot_work(tmp_path):
    ints, floats = make_cfg(tmp_path, "grid.x=[-1,1]")[1], make_cfg(tmp_path, "grid.x=[-1.0,1.0]")[1]
    assert config_hash(ints) == config_hash(floats)
    assert not {"direction.count", "grid.auto_rise"} & set(result_config(floats))
    with pytest.raises(UserError, match=r"grid.x=auto bisects along normalized directions; direction=interpolation"):
        make_cfg(tmp_path, "direction=interpolation", "direction.checkpoints=[b.pt]", "grid=line",
                 "grid.resolution=[5]", "grid.x=auto")
    with pytest.raises(UserError, match=r"grid.y='wide' is neither"):
        make_cfg(tmp_path, "grid.y=wide")
    with pytest.raises(UserError, match=r"grid.auto_rise=1.0 must be > 1"):
        make_cfg(tmp_path, "grid.auto_rise=1")

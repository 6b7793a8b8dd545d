"""N random lines in one store (direction=random grid=line direction.count=N): line i is bitwise the single-line run of
direction.seed=seed+i, summary.json's radius statistics equal a direct float64 computation on the stored curves
(their errors a numerical delta method), the figures are drawn and redrawn, export and compare refuse the layout in
one line, check reads it clean, a cleared tile resumes, and 2 gloo ranks fill the store a single process does."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from engine.app import autogrid
from engine.app.compare import compare_runs
from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.directions.lines import check_lines_fit
from engine.directions.vectors import perturbed
from engine.figures.draw import draw
from engine.figures.vtk import export_vtk
from engine.store.check import check_store
from engine.store.read import read_directions, read_surface
from helpers import make_cfg, torchrun

QUIET = ["summary.epsilon=null", "summary.adaptive_radius=null", "summary.adaptive_average_radius=null"]
LINES = ["model=mlp", "model.hidden=[16]", "grid=line", "grid.resolution=[11]", "grid.tile=[4]", "train.epochs=2",
         *QUIET]
MANY = [*LINES, "grid.x=auto", "name=lines", "plot.enabled=true", "plot.html=false", "plot.formats=[png]"]
COUNT, SEED = 8, 123


@pytest.fixture(scope="module")
def lines_run(tmp_path_factory):
    """One 8-line store over an auto range (K = 4 stacked points per pass, as TINY sets), with its figures; on one
    thread, as the torchrun ranks it is compared with run."""
    out = tmp_path_factory.mktemp("lines")
    cfg, resolved = make_cfg(out, *MANY, f"direction.count={COUNT}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, run_landscape(cfg, resolved, log=False)
    finally:
        torch.set_num_threads(threads)


def test_line_i_is_the_single_line_run_of_seed_plus_i(lines_run):
    out, many = lines_run
    lines = read_surface(many.store)
    assert lines.attrs["dims"] == ["direction", "x"] and lines.metrics["loss"].shape == (COUNT, 11)
    assert lines.done.all() and lines.attrs["line_seeds"] == [SEED + i for i in range(COUNT)]
    stored = read_directions(many.store)
    ckpt = many.run_dir / "checkpoints" / "final.pt"
    lo, hi = lines.attrs["auto_range"]["x"]["range"]  # the single runs sweep the same coordinates
    for i in range(COUNT):
        cfg, resolved = make_cfg(out, *LINES, f"grid.x=[{lo},{hi}]", f"direction.seed={SEED + i}", f"name=single{i}",
                                 f"model.checkpoint={ckpt}")
        single = run_landscape(cfg, resolved, log=False)
        one = read_surface(single.store)
        for metric in ("loss", "accuracy", "loss_stderr"):
            np.testing.assert_array_equal(lines.metrics[metric][i], one.metrics[metric], err_msg=f"line {i} {metric}")
        d0 = read_directions(single.store)[0]
        assert all(np.array_equal(stored[i][n].numpy(), d0[n].numpy()) for n in d0)


def radius(x, f, se, c, step, rise):
    """A direct float64 reference: walk out from c, interpolate the first crossing of f[c] + rise; its standard
    error by central differences of that interpolation in the three losses it uses."""
    j = c
    while 0 <= j + step < len(x) and f[j + step] <= f[c] + rise:
        j += step
    if not 0 <= j + step < len(x):
        return math.inf, None
    a, b = j, j + step

    def crossing(lc, la, lb):
        return abs(x[a] + (x[b] - x[a]) * (lc + rise - la) / (lb - la) - x[c])

    value = crossing(f[c], f[a], f[b])
    grads = []
    for k in range(3):
        h = 1e-6
        up, down = [f[c], f[a], f[b]], [f[c], f[a], f[b]]
        up[k] += h
        down[k] -= h
        grads.append((crossing(*up) - crossing(*down)) / (2 * h))
    return value, math.sqrt(sum((g * s) ** 2 for g, s in zip(grads, (se[c], se[a], se[b]))))


def test_radius_statistics_equal_a_direct_computation(lines_run):
    _, many = lines_run
    surface = read_surface(many.store)
    summary = json.loads((many.run_dir / "summary.json").read_text())
    rise = summary["radius"]["rise"]
    x = surface.coords[1]
    loss, se = surface.metrics["loss"].astype(np.float64), surface.metrics["loss_stderr"].astype(np.float64)
    c = int(np.argmin(np.abs(x)))
    assert x[c] == pytest.approx(0, abs=1e-12)
    sides = {name: [radius(x, loss[i], se[i], c, step, rise) for i in range(COUNT)]
             for name, step in (("plus", 1), ("minus", -1))}
    sides["both"] = sides["plus"] + sides["minus"]
    for name, pairs in sides.items():
        values = np.array([v for v, _ in pairs])
        assert np.isfinite(values).all(), "the auto range reaches 10 x the centre loss: every side closes"
        got = summary["radius"][name]
        assert got["count"] == len(values) and got["open"] == 0
        for key, q in (("min", 0), ("q1", 25), ("median", 50), ("q3", 75)):
            assert got[key] == pytest.approx(np.percentile(values, q), rel=1e-9), (name, key)
        order = np.argsort(values)
        assert got["min_stderr"] == pytest.approx(pairs[order[0]][1], rel=1e-4)
        mid = len(values) // 2  # an even count: the median is the mean of the two middle radii
        assert got["median_stderr"] == pytest.approx(math.hypot(pairs[order[mid - 1]][1], pairs[order[mid]][1]) / 2,
                                                     rel=1e-4)
        if name != "both":
            np.testing.assert_allclose(summary["radius"]["per_line"][name], values, rtol=1e-9)
    assert summary["center"]["loss"] == pytest.approx(float(loss[0, c]))


def test_figures_redraw_and_the_other_commands_take_the_layout(lines_run, tmp_path):
    _, many = lines_run
    assert {p.name for p in (many.run_dir / "figures").iterdir()} >= {"lines.png", "radius_histogram.png"}
    again = draw(many.store, tmp_path / "again")
    assert sorted(p.name for p in again) == ["lines.pdf", "lines.png", "radius_histogram.pdf", "radius_histogram.png"]
    assert check_store(many.store) == []
    with pytest.raises(UserError, match="holds 8 random lines, not a surface") as refused:
        export_vtk(many.store, tmp_path / "vtk")
    assert "\n" not in str(refused.value) and not (tmp_path / "vtk").exists()
    with pytest.raises(UserError, match="not a surface"):
        compare_runs([many.run_dir, many.run_dir], tmp_path / "cmp")


def test_a_cleared_tile_resumes_to_the_same_store_and_range(lines_run, monkeypatch):
    """The rerun takes its range from the store (no bisection) and computes only the cleared tile."""
    out, many = lines_run
    cfg, resolved = make_cfg(out, *MANY, f"direction.count={COUNT}")
    monkeypatch.setattr(autogrid, "bisect_ranges", lambda *a: pytest.fail("a resumed run bisected again"))
    reference = read_surface(many.store).metrics["loss"].copy()
    root = zarr.open_group(many.store, mode="r+")
    root["loss"][5:6, 4:8] = -1.0  # tile (5, 1): line 5, points 4..7, damaged and its flag cleared
    root["done"][5:6, 1:2] = 0
    again = run_landscape(cfg, resolved, log=False)
    assert again.tiles_computed == [("", (5, 1))]
    np.testing.assert_array_equal(read_surface(many.store).metrics["loss"], reference)


def test_too_many_lines_for_the_memory_budget_are_refused():
    from torch import nn

    cfg, _ = make_cfg(Path("/unused"), *LINES, "direction.count=1000", "eval.memory_gb=1e-5")
    target = perturbed(nn.Linear(64, 64), "weights")
    with pytest.raises(UserError, match=r"direction.count=1000 holds 1000 directions .* lower direction.count"):
        check_lines_fit(cfg.direction, target, cfg.eval.memory_gb)
    check_lines_fit(cfg.direction, target, 1.0)  # 16 MB of directions within 4 x 1 GB


@pytest.mark.parametrize("overrides, message", [
    (["grid=plane", "direction.count=4"], "direction.count=4 draws that many random lines: use direction=random"),
    (["direction.count=0"], "direction.count=0 must be >= 1"),
])
def test_lines_need_random_directions_on_a_line(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        make_cfg(tmp_path, *overrides)


def test_two_ranks_fill_the_store_one_process_does(lines_run):
    """The auto range and the 8 lines over 2 gloo ranks (tiles claimed from the counter) equal one process bitwise."""
    out, many = lines_run
    ckpt = many.run_dir / "checkpoints" / "final.pt"
    two = torchrun(2, *MANY, f"direction.count={COUNT}", "name=two", f"model.checkpoint={ckpt}", "plot.enabled=false",
                   "grid.preview=4", cwd=out)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "grid.x=auto: [" in two.stdout
    a, b = read_surface(many.store), read_surface(out / "runs" / "two" / "landscape.zarr")
    assert b.done.all() and a.attrs["auto_range"] == b.attrs["auto_range"]
    np.testing.assert_array_equal(a.coords[1], b.coords[1])
    for metric in ("loss", "accuracy", "loss_stderr"):
        np.testing.assert_array_equal(a.metrics[metric], b.metrics[metric])

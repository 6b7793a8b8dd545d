"""engine.sweep.tiles writes each tile on a writer thread while the next one is computed: every tile ends up in the
store, a write that fails stops the sweep with its own error (never swallowed by the thread), and a rerun
completes the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.sweep.tiles as tiles
from engine.config.schema import GridConfig
from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.batches import device_batches
from engine.sources.checkpoints import state_fingerprint
from engine.sources.data import synthetic_images
from engine.sources.models import MLP
from engine.sources.splits import Split
from engine.store.grid import make_plan
from engine.store.layout import StoreSpec, open_store
from engine.store.read import read_surface
from engine.store.tiles import write_tile
from engine.sweep.perturb import Perturber
from engine.sweep.vectorized import PointRunner


def _sweep_parts(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, [16], 10).eval()
    x, y = synthetic_images((1, 8, 8), 40, 10, 0)
    named = perturbed_tensors(model, "weights")
    names, tensors = [n for n, _ in named], [t for _, t in named]
    directions = random_directions([t.detach() for t in tensors], 2, 0, "filter", "biasbn")
    runner = PointRunner(model, Perturber(tensors, directions), device_batches(Split(x, y), 40, torch.device("cpu")))
    plan = make_plan(GridConfig(resolution=[6, 6], tile=[2, 3]))
    spec = StoreSpec({"test": "writer"}, {"": plan}, names, [tuple(t.shape) for t in tensors], directions,
                     state_fingerprint(model))
    return runner, plan, spec


def test_every_tile_is_written_and_a_failed_write_stops_the_sweep(tmp_path, monkeypatch):
    runner, plan, spec = _sweep_parts(tmp_path)
    whole = open_store(tmp_path / "whole.zarr", spec, overwrite=True)
    assert len(tiles.sweep_tiles(runner, plan, whole, progress=False)) == 6
    reference = read_surface(tmp_path / "whole.zarr")
    assert reference.done.all() and np.isfinite(reference.metrics["loss"]).all()

    written = []

    def failing(root, plan_, tile, values, level="", arrays=None):
        if len(written) == 3:
            raise OSError("disk full")
        write_tile(root, plan_, tile, values, level, arrays)
        written.append(tile)

    monkeypatch.setattr(tiles, "write_tile", failing)
    broken = open_store(tmp_path / "broken.zarr", spec, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        tiles.sweep_tiles(runner, plan, broken, progress=False)
    partial = read_surface(tmp_path / "broken.zarr")
    assert int(partial.done.sum()) == 3  # the tiles written before the failure, each with its done flag

    monkeypatch.setattr(tiles, "write_tile", write_tile)
    tiles.sweep_tiles(runner, plan, open_store(tmp_path / "broken.zarr", spec), progress=False)
    resumed = read_surface(tmp_path / "broken.zarr")
    for metric, values in reference.metrics.items():
        np.testing.assert_array_equal(resumed.metrics[metric], values)

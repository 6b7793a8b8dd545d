"""Stopped, resumed and contended runs: the tiles a rerun recomputes, a store of another config refused (then
overwritten on request), a stopped run's coarse preview drawn, and the store lease (`<store>.lease`) of a job that
cannot release it: a run killed with SIGKILL leaves its lease behind and the rerun takes it over and completes the
store exactly; a live holder's lease older than its ttl is taken over, one within its ttl is refused in one line
naming the holder. (A second torchrun job on a live store is in test_distributed_ranks.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine.app.landscape import run_landscape
from engine.core.errors import UserError
from engine.figures.draw import surface_to_draw
from engine.store.grid import PREVIEW
from engine.store.read import read_surface
from helpers import ENV, TINY, assert_same_store, make_cfg

LEASE_GRID = ["grid.resolution=[24,24]", "grid.preview=4", "summary.epsilon=null"]  # 36 + 4 tiles: seconds of sweeping


def landscape(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """The `landscape` command in a subprocess (one process, no torchrun), not waited for."""
    cmd = [sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *LEASE_GRID, *args]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str]) -> None:
    """Wait for a run and require success."""
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out


def test_killed_run_leaves_its_lease_and_the_rerun_takes_it_over(trained_run, tmp_path):
    """SIGKILL gives the lease no chance to be released; the holder's pid is dead on this host, so the rerun takes
    the lease over, resumes, and ends with the numbers of an uninterrupted run."""
    _, _, trained = trained_run
    ckpt = f"model.checkpoint={trained.run_dir / 'checkpoints' / 'final.pt'}"
    reference = landscape(ckpt, "name=whole", cwd=tmp_path)  # meanwhile, on the other core
    killed = landscape(ckpt, "name=killed", cwd=tmp_path)
    run = tmp_path / "runs" / "killed"
    lease, log = run / "landscape.zarr.lease", run / "logs" / "rank0.log"
    try:
        deadline = time.time() + 240
        while not (lease.exists() and log.exists() and re.search(r"tile \(", log.read_text())):  # mid-sweep
            assert killed.poll() is None, f"the run ended before it could be killed: {killed.communicate()[0]}"
            assert time.time() < deadline, "the run never started sweeping"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=60)
        assert killed.returncode == -signal.SIGKILL
        holder = json.loads(lease.read_text())
        assert holder["pid"] == killed.pid and holder["expires"] > time.time()  # left behind, not yet expired
        assert not read_surface(run / "landscape.zarr").done.all()
        finish(landscape(ckpt, "name=killed", cwd=tmp_path))
        assert not lease.exists()
        finish(reference)
    finally:
        for proc in (killed, reference):
            if proc.returncode is None:
                proc.kill()
                proc.communicate()
    assert_same_store(tmp_path / "runs" / "whole" / "landscape.zarr", run / "landscape.zarr")


@pytest.mark.parametrize("elsewhere", [True, False], ids=["other-host", "this-host-live-pid"])
def test_live_holder_is_refused_within_ttl_and_taken_over_after(trained_run, tmp_path, elsewhere):
    """A lease whose holder is alive (another host, or a live process here) keeps a second run out, in one line
    naming the holder, until it has gone unrenewed for ttl; then the run takes it over and completes."""
    _, _, trained = trained_run
    cfg, resolved = make_cfg(tmp_path, "name=held", f"model.checkpoint={trained.run_dir / 'checkpoints' / 'final.pt'}",
                             "summary.epsilon=null")
    store = tmp_path / "held" / "landscape.zarr"
    lease = store.with_name("landscape.zarr.lease")
    host, pid = ("node-elsewhere", 4242) if elsewhere else (socket.gethostname(), os.getppid())
    held = {"holder": f"{host}:{pid}", "pid": pid, "host": host}
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps({**held, "expires": time.time() + 60}))  # renewed moments ago
    with pytest.raises(UserError) as refused:
        run_landscape(cfg, resolved, log=False)
    message = str(refused.value)
    assert "\n" not in message and f"is being written by {host}:{pid}" in message, message
    assert json.loads(lease.read_text())["holder"] == held["holder"] and not store.exists()
    lease.write_text(json.dumps({**held, "expires": time.time() - 1}))  # not renewed for longer than ttl
    result = run_landscape(cfg, resolved, log=False)
    assert read_surface(result.store).done.all() and not lease.exists()


def test_resume_recomputes_only_cleared_tile(tmp_path):
    cfg, resolved = make_cfg(tmp_path)
    first = run_landscape(cfg, resolved, log=False)
    assert len(first.tiles_computed) == 4
    reference = read_surface(first.store).metrics["loss"].copy()
    root = zarr.open_group(first.store, mode="r+")
    root["loss"][4:6, 0:4] = -1.0  # data of tile (1, 0) damaged, and its flag cleared
    root["done"][1:2, 0:1] = 0
    second = run_landscape(cfg, resolved, log=False)
    assert second.tiles_computed == [("", (1, 0))]
    np.testing.assert_array_equal(read_surface(first.store).metrics["loss"], reference)
    assert run_landscape(cfg, resolved, log=False).tiles_computed == []


def test_store_of_another_config_is_refused_then_overwritten(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "name=x")
    first = run_landscape(cfg, resolved, log=False)
    before = read_surface(first.store).metrics["loss"].copy()
    other, other_resolved = make_cfg(tmp_path, "name=x", "direction.seed=99")
    with pytest.raises(UserError, match=r"different config \(direction.seed: 123 -> 99\)"):
        run_landscape(other, other_resolved, log=False)
    np.testing.assert_array_equal(read_surface(first.store).metrics["loss"], before)
    forced, forced_resolved = make_cfg(tmp_path, "name=x", "direction.seed=99", "store.overwrite=true")
    again = run_landscape(forced, forced_resolved, log=False)
    assert len(again.tiles_computed) == 4
    assert read_surface(again.store).attrs["config"]["direction"]["seed"] == 99


def test_stopped_run_draws_its_complete_coarse_preview(tmp_path):
    cfg, resolved = make_cfg(tmp_path, "grid.resolution=[16,12]", "grid.tile=[4,4]", "grid.preview=3",
                             "plot.enabled=true", "plot.formats=[png]")
    result = run_landscape(cfg, resolved, log=False)
    assert [lvl for lvl, _ in result.tiles_computed[:2]] == [PREVIEW, PREVIEW]  # coarse level first
    root = zarr.open_group(result.store, mode="r+")
    root["done"][1:, :] = 0  # as if stopped after the preview and the first row of full tiles
    surface, state = surface_to_draw(result.store)
    assert surface.metrics["loss"].shape == (6, 4) and "coarse preview, 3/12 tiles done" in state
    np.testing.assert_array_equal(surface.metrics["loss"], read_surface(result.store).metrics["loss"][::3, ::3])


def test_resume_refuses_a_store_whose_directions_are_not_the_runs(tmp_path):
    """Same config, same weights, other directions in the store (as when a direction file or checkpoint is rewritten
    under the same path): the rerun refuses in one line naming the direction and tensor, and changes nothing."""
    cfg, resolved = make_cfg(tmp_path, "name=d")
    first = run_landscape(cfg, resolved, log=False)
    root = zarr.open_group(first.store, mode="r+")
    d1 = root["directions/d1"]
    d1[:] = np.asarray(d1[:]) * 1.01  # one per cent: far beyond rounding
    root["done"][1:2, 0:1] = 0  # a tile left to sweep
    before = read_surface(first.store).metrics["loss"].copy()
    name = d1.attrs["names"][0]
    with pytest.raises(UserError, match=rf"holds other directions than this run makes \(d1, tensor {name}\)"):
        run_landscape(cfg, resolved, log=False)
    np.testing.assert_array_equal(read_surface(first.store).metrics["loss"], before)
    assert not read_surface(first.store).done.all()

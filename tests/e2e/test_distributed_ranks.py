"""Real gloo ranks through torchrun: N-rank stores (standard errors included) equal the 1-process store exactly, the
timed batch size and K are rank 0's on every rank, a killed rank is survived by a rerun with identical numbers, and a
second job on a live store is refused; submitit's local executor as a 2-task job equals the 1-process store too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.store.grid import PREVIEW
from engine.store.read import read_surface
from helpers import ENV, GRID, TINY, assert_same_store, run_cli, torchrun


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A trained checkpoint and the 1-process store made from it."""
    cwd = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID, "name=one"],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return cwd, cwd / "runs" / "one"


@pytest.mark.parametrize("nproc", [2, 3])
def test_ranks_make_the_same_store_as_one_process(reference, nproc):
    cwd, one = reference
    ckpt = one / "checkpoints" / "final.pt"
    done = torchrun(nproc, f"model.checkpoint={ckpt}", f"name=n{nproc}", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    run = cwd / "runs" / f"n{nproc}"
    assert_same_store(one / "landscape.zarr", run / "landscape.zarr")
    for level in ("", PREVIEW):  # and the standard errors: each point's are its own rank's, over the whole eval set
        ranks, single = read_surface(run / "landscape.zarr", level), read_surface(one / "landscape.zarr", level)
        for metric in ("loss_stderr", "accuracy_stderr"):
            assert np.isfinite(single.metrics[metric]).all() and (single.metrics[metric] > 0).all()
            np.testing.assert_array_equal(ranks.metrics[metric], single.metrics[metric])
    logs = sorted(p.name for p in (run / "logs").iterdir())
    assert logs == [f"rank{r}.log" for r in range(nproc)]
    claimed = [len(re.findall(r"tile \(", (run / "logs" / f).read_text())) for f in logs]
    assert sum(claimed) == 9 + 4  # every tile of both levels exactly once, across ranks
    assert (run / "summary.json").exists() and (run / "figures").is_dir() is False  # plot.enabled=false


def test_timed_batch_size_and_k_are_rank_0s_on_every_rank(reference):
    """eval.batch_size and eval.points_per_pass unset (the defaults): rank 0 times both and broadcasts its choice,
    so both ranks log the same batch size and K, and the store they fill is complete and the 1-process surface."""
    cwd, one = reference
    done = torchrun(2, f"model.checkpoint={one / 'checkpoints' / 'final.pt'}", "name=timed", "eval.batch_size=null",
                    "eval.points_per_pass=null", "summary.epsilon=null", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    run = cwd / "runs" / "timed"
    chosen = []
    for rank in range(2):
        log = (run / "logs" / f"rank{rank}.log").read_text()
        batch, k = re.findall(r"eval batch size (\d+)", log), re.findall(r"points per pass: K=(\d+)", log)
        assert len(batch) == 1 and len(k) == 1, log
        chosen.append((int(batch[0]), int(k[0])))
    assert chosen[0] == chosen[1], f"rank 0 chose (batch size, K) = {chosen[0]}, rank 1 used {chosen[1]}"
    for level in ("", PREVIEW):
        timed, single = read_surface(run / "landscape.zarr", level), read_surface(one / "landscape.zarr", level)
        assert timed.done.all()
        np.testing.assert_allclose(timed.metrics["loss"], single.metrics["loss"], rtol=2e-5, atol=1e-6)


def _wait_for(pattern: str, path: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and (m := re.search(pattern, path.read_text())):
            return m.group(1)
        assert proc.poll() is None, f"job ended early: {proc.stdout.read() if proc.stdout else ''}"
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in {path}")


def test_killed_rank_stops_the_job_and_rerun_completes_identically(reference):
    cwd, one = reference
    args = (f"model.checkpoint={one / 'checkpoints' / 'final.pt'}", "name=killed", "eval.samples=256")
    proc = torchrun(2, *args, cwd=cwd, wait=False)
    log1 = cwd / "runs" / "killed" / "logs" / "rank1.log"
    pid = int(_wait_for(r"pid (\d+)\)", log1, proc))
    _wait_for(r"(tile) \(", log1, proc)
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)  # the job stops visibly instead of hanging
    assert proc.returncode != 0
    partial = read_surface(cwd / "runs" / "killed" / "landscape.zarr")
    assert not partial.done.all()
    done = torchrun(2, *args, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    reference_256 = run_cli("main", *TINY, *GRID, *args[:1], "name=ref256", "eval.samples=256", cwd=cwd)
    assert reference_256.returncode == 0, reference_256.stderr
    assert_same_store(cwd / "runs" / "ref256" / "landscape.zarr", cwd / "runs" / "killed" / "landscape.zarr")


def test_second_job_on_a_live_store_is_refused(reference):
    cwd, one = reference
    args = (f"model.checkpoint={one / 'checkpoints' / 'final.pt'}", "name=busy", "grid.resolution=[80,80]")
    first = torchrun(1, *args, cwd=cwd, wait=False)
    _wait_for(r"(tile) \(", cwd / "runs" / "busy" / "logs" / "rank0.log", first)
    store = cwd / "runs" / "busy" / "landscape.zarr"
    before = read_surface(store).done.sum()
    second = run_cli("main", *TINY, *GRID, *args, cwd=cwd)
    assert second.returncode == 2 and "is being written by" in second.stderr, second.stderr
    assert first.poll() is None, "the first job should still be running"
    first.send_signal(signal.SIGTERM)  # a clean stop (as torchrun or SLURM would send) releases the lease
    first.communicate(timeout=120)
    assert not Path(f"{store}.lease").exists()
    assert read_surface(store).done.sum() >= before


def test_submitit_local_two_tasks_equal_one_process(reference):
    """submitit's local executor as a 2-task job (its tasks are the ranks, no torchrun) equals the 1-process store."""
    cwd, one = reference
    job = subprocess.run([sys.executable, "-m", "engine.app.launch", "--cluster", "local", "--tasks", "2", "--wait",
                          *TINY, *GRID, f"model.checkpoint={one / 'checkpoints' / 'final.pt'}", "name=two"],
                         cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "done: runs/two/landscape.zarr" in job.stdout
    assert sorted(p.name for p in (cwd / "runs" / "two" / "logs").iterdir()) == ["rank0.log", "rank1.log"]
    for level in ("", PREVIEW):
        a = read_surface(one / "landscape.zarr", level)
        b = read_surface(cwd / "runs" / "two" / "landscape.zarr", level)
        assert b.done.all()
        np.testing.assert_array_equal(a.metrics["loss"], b.metrics["loss"])

"""A real one-node SLURM cluster (slurm/start-cluster.sh): the sbatch templates, submitit's SLURM executor and
Hydra's submitit launcher each make complete stores, and the 2-rank ones equal the 1-process store exactly.

Skipped only where slurmctld is not installed; where it is, the cluster must start or the tests fail.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store.read import read_surface
from helpers import ENV, GRID, TINY, assert_same_store

ROOT = Path(__file__).resolve().parents[2]  # tests/e2e/ -> the checkout
SLURM = ROOT / "slurm"
TIMEOUT = 240


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the cluster (stopped at the end only if this session started it)."""
    if shutil.which("slurmctld") is None:
        pytest.skip("slurmctld is not installed: run slurm/start-cluster.sh (CI does)")
    start = subprocess.run(["bash", str(SLURM / "start-cluster.sh")], capture_output=True, text=True, timeout=300)
    assert start.returncode == 0, f"slurm/start-cluster.sh failed:\n{start.stdout}{start.stderr}"
    started = "already running" not in start.stdout
    yield
    if started:
        stop = subprocess.run(["bash", str(SLURM / "stop-cluster.sh")], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stdout + stop.stderr


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory):
    """A trained checkpoint and the 1-process store made from it (no SLURM)."""
    cwd = tmp_path_factory.mktemp("slurm")
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID,
                           f"out_dir={cwd / 'runs'}", "name=one"],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    one = cwd / "runs" / "one"
    return cwd, one / "checkpoints" / "final.pt", one / "landscape.zarr"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _sbatch(template: str, *args: str, cwd: Path, env: dict[str, str], flags: tuple[str, ...] = ()) -> None:
    """`sbatch --wait` a template; on failure the assertion shows the job's log."""
    done = subprocess.run(["sbatch", "--wait", *flags, str(SLURM / template), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    job = re.search(r"Submitted batch job (\d+)", done.stdout)
    log = cwd / f"landscape-{job.group(1)}.log" if job else None
    assert done.returncode == 0, (done.stdout + done.stderr + (log.read_text() if log and log.exists() else ""))
    assert log is not None and log.exists()


def test_start_cluster_twice_is_fine(slurm_cluster):
    again = subprocess.run(["bash", str(SLURM / "start-cluster.sh")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert re.search(r"debug\*\s+up\s+\S+\s+1\s+(idle|mix|alloc)", again.stdout), again.stdout


def test_single_node_sbatch_two_ranks_equal_one_process(reference):
    cwd, ckpt, one = reference
    out = cwd / "runs"
    _sbatch("single-node.sbatch", *TINY, *GRID, f"model.checkpoint={ckpt}", f"out_dir={out}", "name=single",
            cwd=cwd, env={**ENV, "NPROC": "2"})
    assert_same_store(one, out / "single" / "landscape.zarr")
    assert sorted(p.name for p in (out / "single" / "logs").iterdir()) == ["rank0.log", "rank1.log"]


def test_multi_node_sbatch_on_one_node(reference):
    """The multi-node template with its c10d rendezvous, on the one node there is (-N1)."""
    cwd, ckpt, one = reference
    out = cwd / "runs"
    _sbatch("multi-node.sbatch", *TINY, *GRID, f"model.checkpoint={ckpt}", f"out_dir={out}", "name=multi",
            cwd=cwd, env={**ENV, "NPROC": "2", "RDZV_PORT": str(_free_port())}, flags=("-N1",))
    assert_same_store(one, out / "multi" / "landscape.zarr")
    assert sorted(p.name for p in (out / "multi" / "logs").iterdir()) == ["rank0.log", "rank1.log"]


def test_submitit_slurm_two_tasks_equal_one_process(reference):
    cwd, ckpt, one = reference
    out = cwd / "runs"
    job = subprocess.run([sys.executable, str(ROOT / "launchers" / "submit.py"), "--cluster", "slurm", "--tasks", "2",
                          "--wait", "--", *TINY, *GRID, f"model.checkpoint={ckpt}", f"out_dir={out}", "name=submitit"],
                         cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert job.returncode == 0, job.stdout + job.stderr
    assert f"done: {out / 'submitit' / 'landscape.zarr'}" in job.stdout
    assert_same_store(one, out / "submitit" / "landscape.zarr")


def test_hydra_submitit_slurm_launcher_multirun(slurm_cluster, tmp_path):
    out = tmp_path / "multirun"
    # Two jobs side by side on the node: one thread each (ENV), as a user would set on a shared node.
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", "-m",
                           "model=resnet8,plain8", "hydra/launcher=slurm", *TINY, f"out_dir={out}"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("resnet8-digits", "plain8-digits"):
        assert read_surface(out / name / "landscape.zarr").done.all()
    scripts = list((out / ".submitit").glob("*/*_submission.sh"))  # one SLURM array job of two tasks
    assert len(scripts) == 1 and "#SBATCH --array=0-1" in scripts[0].read_text()
    assert len(list((out / ".submitit").glob("*_[01]/*_result.pkl"))) == 2

"""parallel.shard=S on real gloo ranks (FSDP2 on CPU): a ResNet-8 sharded over 2 and over 4 ranks (10 classes: rows
that do not divide), over 4 ranks as 2 replica groups of 2 shards, a tiny GPT-2 sharded over 2 and over 4 ranks (its
random directions drawn, and read back from a store with direction=file), and that GPT-2 in bfloat16 on the line to
a checkpoint give the store of one unsharded process bit for bit (the same forward per batch on the gathered
weights, the per-batch sums added in batch order), and so does the plane through it and two checkpoints, whose
sharpness numbers, computed on the shards, agree to float32 rounding; a sharded run killed with SIGKILL and rerun
equals an uninterrupted one, and a rerun over a store whose directions are not the run's is refused; what a sharded
model cannot do is refused in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine.store.read import read_directions, read_surface
from helpers import ENV, GRID, SAME_PATH, TINY, assert_same_store, torchrun
from hf_fixtures import save_tiny_lm, tiny_text

LM = ["model=hf", "data=text", "data.block_size=32", "loss=causal_lm", "eval.samples=24", "eval.batch_size=4",
      "grid.resolution=[3,3]", "grid.tile=[2,2]", "grid.preview=0"]


def one_process(cwd: Path, *overrides: str) -> None:
    finish(start_one(cwd, *overrides))


def start_one(cwd: Path, *overrides: str) -> subprocess.Popen[str]:
    """The unsharded reference run (one thread), started and not waited for."""
    return subprocess.Popen([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID,
                             *overrides], cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def sharded(nproc: int, *overrides: str, cwd: Path) -> None:
    done = torchrun(nproc, *overrides, cwd=cwd)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unsharded 1-process stores and the sharded ones, of the ResNet and of the LM. The references start in
    the background as soon as their inputs exist, so they run beside the sharded jobs."""
    import torch
    import transformers

    cwd = tmp_path_factory.mktemp("sharded")
    one = start_one(cwd, *SAME_PATH, "name=one")
    text = tiny_text(6000)
    (cwd / "corpus.txt").write_text(text)
    save_tiny_lm(cwd / "lm", text)
    lm = [*LM, f"model.path={cwd / 'lm'}", f"data.path={cwd / 'corpus.txt'}"]
    state = transformers.AutoModelForCausalLM.from_pretrained(cwd / "lm").state_dict()
    for seed, name in ((1, "b.pt"), (2, "c.pt")):  # two other models near the LM
        torch.manual_seed(seed)
        torch.save({k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}, cwd / name)
    # a bfloat16 model on the line to a checkpoint B: the end point cut to each rank's rows, each point computed in
    # float32 from the shard's theta* and rounded once
    line = [*lm, "model.dtype=bfloat16", "direction=interpolation", f"direction.checkpoints=[{cwd / 'b.pt'}]",
            "grid=line", "grid.resolution=[5]", "grid.x=[0,1]", "grid.tile=[2]", "grid.preview=0"]
    # the plane through theta*, B and C, made from each rank's rows, with the sharpness numbers computed on the
    # shards (epsilon by sign steps, adaptive by l2-normalized steps: norms summed over the group)
    plane = [*lm, "direction=plane", f"direction.checkpoints=[{cwd / 'b.pt'},{cwd / 'c.pt'}]", "direction.norm=none",
             "summary.adaptive_norm=2", *SAME_PATH[:-2]]
    lm_one = start_one(cwd, *SAME_PATH, *lm, "name=lm_one")
    line_one = start_one(cwd, *SAME_PATH, *line, "name=line_one")
    plane_one = start_one(cwd, *plane, "name=plane_one")
    finish(one)
    ckpt = f"model.checkpoint={cwd / 'runs' / 'one' / 'checkpoints' / 'final.pt'}"
    for nproc, shard, name, load in ((2, 2, "s2", "auto"), (4, 2, "r2s2", "whole"), (4, 4, "s4", "auto")):
        sharded(nproc, ckpt, *SAME_PATH, f"parallel.shard={shard}", f"parallel.load={load}", f"name={name}",
                cwd=cwd)  # each rank reads its rows (auto) or loads the model whole first
    for nproc in (2, 4):
        sharded(nproc, *SAME_PATH, *lm, f"parallel.shard={nproc}", f"name=lm_s{nproc}", cwd=cwd)
    finish(lm_one)
    # direction=file read from the unsharded store, tensor by tensor on each rank (norm=none keeps them as stored)
    sharded(2, *SAME_PATH, *lm, "parallel.shard=2", "direction=file", "direction.norm=none",
            f"direction.path={cwd / 'runs' / 'lm_one' / 'landscape.zarr'}", "name=lm_file_s2", cwd=cwd)
    sharded(2, *SAME_PATH, *line, "parallel.shard=2", "name=line_s2", cwd=cwd)
    sharded(2, *plane, "parallel.shard=2", "name=plane_s2", cwd=cwd)
    finish(line_one)
    finish(plane_one)
    return cwd


@pytest.mark.parametrize(("one", "sharded"), [("one", "s2"), ("one", "r2s2"), ("one", "s4"), ("lm_one", "lm_s2"),
                                              ("lm_one", "lm_s4"),
                                              ("lm_one", "lm_file_s2"), ("line_one", "line_s2"),
                                              ("plane_one", "plane_s2")])
def test_sharded_store_equals_one_unsharded_process(runs: Path, one: str, sharded: str) -> None:
    a, b = runs / "runs" / one / "landscape.zarr", runs / "runs" / sharded / "landscape.zarr"
    if one != "one":  # no preview level on the LM's grids
        sa, sb = read_surface(a), read_surface(b)
        assert sa.done.all() and sb.done.all()
        for metric in sa.metrics:
            np.testing.assert_array_equal(sa.metrics[metric], sb.metrics[metric])
    else:
        assert_same_store(a, b)
    for da, db in zip(read_directions(a), read_directions(b)):
        assert da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


@pytest.mark.parametrize(("name", "reads_rows"), [("s2", True), ("r2s2", False), ("s4", True), ("lm_s2", True),
                                                ("lm_s4", True), ("lm_file_s2", True), ("line_s2", True),
                                                ("plane_s2", True)])
def test_ranks_read_only_their_rows_unless_told_to_load_whole(runs: Path, name: str, reads_rows: bool) -> None:
    """parallel.load=auto builds the model on the meta device and each rank reads its rows of the checkpoint (or of
    the Hugging Face folder's safetensors); parallel.load=whole loads it whole first. Both stores equal one process's
    (test above), directions included, though no rank of the first kind ever held them whole."""
    logs = sorted((runs / "runs" / name / "logs").glob("rank*.log"))
    assert len(logs) == (4 if name in ("r2s2", "s4", "lm_s4") else 2)
    for log in logs:
        assert ("this rank read its rows of" in log.read_text()) is reads_rows


def test_sharpness_on_the_shards_equals_one_process_to_float32_rounding(runs: Path) -> None:
    """Epsilon- and adaptive sharpness of the plane's run, each rank ascending on its rows: the same random starts
    (drawn whole, rows kept) and steps; the losses are float32 sums added in another order (batches cut over the
    ranks, the parts added in float64), so they agree to a few float32 roundings of the loss, not bit for bit."""
    one, sharded = (json.loads((runs / "runs" / n / "summary.json").read_text())["sharpness"]
                    for n in ("plane_one", "plane_s2"))
    scale = 2e-6 * (1 + one["epsilon"]["loss"])
    for key in ("loss", "max_loss"):
        assert sharded["epsilon"][key] == pytest.approx(one["epsilon"][key], abs=scale)
    assert sharded["epsilon"]["max_loss"] > sharded["epsilon"]["loss"] + 100 * scale  # the ascent climbed
    for key in ("worst", "average"):
        assert sharded["adaptive"][key] == pytest.approx(one["adaptive"][key], abs=scale)
    assert sharded["adaptive"]["worst"] > 0
    assert sharded["adaptive"]["samples"] == one["adaptive"]["samples"] == 32


def test_groups_claim_tiles_and_leaders_write_them(runs: Path) -> None:
    """R=2 groups of 2: both groups' leaders (ranks 0 and 2) claim tiles, every tile once; ranks 1 and 3 claim none."""
    logs = runs / "runs" / "r2s2" / "logs"
    claimed = {r: len(re.findall(r"tile \(", (logs / f"rank{r}.log").read_text())) for r in range(4)}
    assert claimed[1] == claimed[3] == 0 and claimed[0] + claimed[2] == 9 + 4
    text = (logs / "rank3.log").read_text()
    assert "replica group 1 of 2, shard 1" in text


def _wait_for(pattern: str, path: Path, proc: subprocess.Popen, timeout: float = 240) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(pattern, path.read_text()) if path.exists() else None
        if found:
            return found.group(1)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{pattern} not in {path} after {timeout} s")


def test_killed_sharded_run_resumes_to_the_uninterrupted_store(runs: Path) -> None:
    ckpt = f"model.checkpoint={runs / 'runs' / 'one' / 'checkpoints' / 'final.pt'}"
    args = (ckpt, *SAME_PATH, "parallel.shard=2", "name=killed", "eval.samples=256")
    proc = torchrun(2, *args, cwd=runs, wait=False)
    log1 = runs / "runs" / "killed" / "logs" / "rank1.log"
    pid = int(_wait_for(r"pid (\d+)\)", log1, proc))
    _wait_for(r"(tile) \(", runs / "runs" / "killed" / "logs" / "rank0.log", proc)
    os.kill(pid, signal.SIGKILL)  # a shard of the group dies mid-sweep
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    store = runs / "runs" / "killed" / "landscape.zarr"
    assert not read_surface(store).done.all()
    before = read_directions(store)
    chunk = next((store / "directions" / "d1" / "c").iterdir())
    chunk.write_bytes(chunk.read_bytes()[:10])  # a direction no rank holds whole, damaged: the group rewrites it
    done = torchrun(2, *args, cwd=runs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one_process(runs, ckpt, *SAME_PATH, "name=whole256", "eval.samples=256")
    assert_same_store(runs / "runs" / "whole256" / "landscape.zarr", store)
    assert "recomputing 0 damaged tile(s) (directions/d1/c/0" in done.stdout
    for da, db in zip(before, read_directions(store)):
        assert all(np.array_equal(da[k], db[k]) for k in da)
    # rerun over directions that are not the run's: the last tensor's last rows (rank 1's) moved in the store
    d0 = zarr.open_group(store, mode="r+")["directions/d0"]
    d0[-3:] = np.asarray(d0[-3:]) + 0.5
    done = torchrun(2, *args, cwd=runs)
    assert done.returncode != 0
    assert "holds other directions than this run makes (d0, tensor " in done.stdout + done.stderr


@pytest.mark.parametrize(("extra", "message"), [
    ([], "parallel.shard=2 needs a multiple of 2 ranks and this job has 1"),
    (["hessian.curvature=true"], "parallel.shard=2 does not support hessian.curvature"),
    (["eval.recalibrate_bn=true"], "parallel.shard=2 does not support eval.recalibrate_bn"),
    (["parallel.load=sharded", "hessian.spectrum=true"], "parallel.load=sharded cannot read each rank's rows here: "
     "hessian.spectrum runs on the whole model"),
])
def test_what_a_sharded_model_cannot_do_is_refused_in_one_line(runs: Path, extra: list[str], message: str) -> None:
    ckpt = f"model.checkpoint={runs / 'runs' / 'one' / 'checkpoints' / 'final.pt'}"
    done = subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID, ckpt,
                           *SAME_PATH, "parallel.shard=2", "name=refused", *extra], cwd=runs, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert not (runs / "runs" / "refused" / "landscape.zarr").exists()
    assert done.stderr.strip().splitlines() == [f"error: {message}" + done.stderr.split(message, 1)[1].split("\n")[0]]

"""Damaged stores end to end: a chunk of a metric, a standard error or a done flag truncated, emptied or deleted
(what a node dying mid-write leaves), in a complete or a partial store; the same `landscape` command (one process,
or two torchrun gloo ranks) recomputes the damaged tiles and ends with the undamaged store, every array bit for bit.
Damaged coordinates and directions are rewritten, a damaged root zarr.json refused in one line; landscape-check
exits 1 listing the damage and 0 once repaired; landscape-plot draws a damaged store as partial or refuses in one
line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from helpers import ENV, GRID, TINY, run_cli, torchrun
from store_fixtures import damage

NO_SHARPNESS = ["summary.epsilon=null", "summary.adaptive_radius=null"]  # not what these tests are about


def landscape(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The `landscape` command in one process, as a user runs it."""
    return subprocess.run([sys.executable, "-c", "from engine.app.cli import main; main()", *TINY, *GRID,
                           *NO_SHARPNESS, *args],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A trained checkpoint and the complete undamaged store made from it (name=ref)."""
    cwd = tmp_path_factory.mktemp("damaged")
    trained = landscape("name=one", cwd=cwd)
    assert trained.returncode == 0, trained.stderr
    ckpt = f"model.checkpoint={cwd / 'runs' / 'one' / 'checkpoints' / 'final.pt'}"
    done = landscape(ckpt, "name=ref", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd, ckpt


def damaged_copy(reference, name: str, files: list[tuple[str, str]], pending: tuple[int, int] | None = None) -> Path:
    """runs/<name>: a copy of the reference run with files damaged ("truncated", "emptied", "deleted"), and one
    more tile's done flag cleared when `pending` (a partial store, as a stopped run leaves it)."""
    cwd, _ = reference
    run = Path(shutil.copytree(cwd / "runs" / "ref", cwd / "runs" / name))
    store = run / "landscape.zarr"
    for file, how in files:
        damage(store / file, how)
    if pending is not None:
        zarr.open_group(store, mode="r+")["done"][pending[0]:pending[0] + 1, pending[1]:pending[1] + 1] = 0
    return store


def assert_bitwise_equal(a: Path, b: Path) -> None:
    """Every array of both stores equal, NaN positions included."""
    ra, rb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = [f"{p}{n}" for p, g in (("", ra), ("preview/", ra["preview"]), ("directions/", ra["directions"]))
             for n, _ in g.arrays()]  # type: ignore[union-attr]
    assert "loss_stderr" in names and "preview/done" in names
    for name in names:
        np.testing.assert_array_equal(np.asarray(ra[name][...]), np.asarray(rb[name][...]), err_msg=name)


# Every kind of damage to a metric, a standard error and a done flag, each on its own tile, in one store
DAMAGE = [("loss/c/1/0", "truncated"), ("loss_stderr/c/2/1", "emptied"), ("preview/accuracy/c/1/1", "truncated"),
          ("done/c/0/2", "truncated"), ("loss/c/2/2", "deleted"), ("accuracy_stderr/c/0/0", "deleted"),
          ("done/c/1/2", "emptied")]


@pytest.mark.parametrize("partial", [False, True], ids=["complete", "partial"])
def test_rerun_recomputes_damaged_tiles_bit_for_bit(reference, partial):
    cwd, ckpt = reference
    name = "partial" if partial else "complete"
    store = damaged_copy(reference, name, DAMAGE, (1, 1) if partial else None)
    check = run_cli("check_main", str(store), cwd=cwd)
    assert check.returncode == 1 and all(f.split("/c/")[0] in check.stdout for f, _ in DAMAGE), check.stdout
    done = landscape(ckpt, f"name={name}", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert f"recomputing {len(DAMAGE)} damaged tile(s)" in done.stdout, done.stdout
    assert_bitwise_equal(cwd / "runs" / "ref" / "landscape.zarr", store)
    assert run_cli("check_main", str(store), cwd=cwd).returncode == 0


def test_two_ranks_recompute_damaged_tiles_bit_for_bit(reference):
    """Rank 0 clears the flags before the barrier; both ranks then sweep the cleared tiles."""
    cwd, ckpt = reference
    store = damaged_copy(reference, "ranks", [("loss/c/1/0", "truncated"), ("done/c/2/0", "emptied"),
                                              ("loss_stderr/c/0/1", "deleted")], pending=(2, 2))
    done = torchrun(2, *NO_SHARPNESS, ckpt, "name=ranks", cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recomputing 3 damaged tile(s)" in done.stdout + done.stderr
    assert_bitwise_equal(cwd / "runs" / "ref" / "landscape.zarr", store)


def test_damaged_coordinates_and_directions_are_rewritten(reference):
    cwd, ckpt = reference
    files = ["x/c/0", "directions/d0/c/0", "y/zarr.json"]
    store = damaged_copy(reference, "coords", [(f, "truncated") for f in files])
    done = landscape(ckpt, "name=coords", cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "recomputing 0 damaged tile(s)" in done.stdout and all(f in done.stdout for f in files), done.stdout
    assert_bitwise_equal(cwd / "runs" / "ref" / "landscape.zarr", store)


def test_damaged_root_metadata_is_refused_in_one_line(reference):
    cwd, ckpt = reference
    store = damaged_copy(reference, "root", [("zarr.json", "truncated")])
    refused = landscape(ckpt, "name=root", cwd=cwd)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "zarr.json is damaged" in lines[0] and "store.overwrite=true" in lines[0], lines
    plot = run_cli("plot_main", str(store), cwd=cwd)
    assert plot.returncode == 2 and len(plot.stderr.strip().splitlines()) == 1 and "zarr.json is damaged" in \
        plot.stderr


def test_plot_and_check_on_a_damaged_store(reference):
    """landscape-plot warns in one line and draws the complete preview; landscape-check lists file and reason."""
    cwd, _ = reference
    store = damaged_copy(reference, "plot", [("loss/c/0/0", "truncated")])
    check = run_cli("check_main", str(store), str(cwd / "runs" / "ref"), cwd=cwd)
    assert check.returncode == 1 and "loss/c/0/0: does not decode" in check.stdout
    assert f"{cwd / 'runs' / 'ref' / 'landscape.zarr'}: clean" in check.stdout
    plot = run_cli("plot_main", str(store), "--formats", "png", "--no-html", cwd=cwd)
    assert plot.returncode == 0 and "Traceback" not in plot.stderr, plot.stderr
    assert plot.stderr.count("1 damaged tile(s) read as missing") == 1, plot.stderr
    assert "partial, 1 tile(s) missing" in plot.stdout, plot.stdout

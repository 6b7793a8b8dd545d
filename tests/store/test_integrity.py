"""Damaged stores: landscape-check lists truncated, emptied and deleted chunks, undecodable metadata and leftover
`*.partial` files; the reopen repair clears the damaged tiles' flags (and rewriting them gives the undamaged store
back bit for bit), rewrites coordinates and directions, and refuses a damaged root in one line naming the file;
readers see damaged tiles as not done."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine.core.errors import UserError
from engine.figures.select import complete_surface
from engine.store.check import check_store
from engine.store.layout import open_store
from engine.store.read import read_directions, read_surface
from engine.store.repair import repair_store
from store_fixtures import damage, fill_tiles, make_spec

METRICS = ("loss", "loss_stderr", "accuracy")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete store with a preview level, every tile written."""
    path = tmp_path_factory.mktemp("ref") / "landscape.zarr"
    spec = make_spec([9, 8], metrics=METRICS, preview=2)
    fill_tiles(open_store(path, spec), spec)
    return path


def copy(reference: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference, tmp_path / "landscape.zarr"))


def assert_same(a: Path, b: Path) -> None:
    """Every array of both stores equal, NaN positions included."""
    ra, rb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = sorted(name for name, _ in ra.arrays()) + [f"{g}/{n}" for g in ("preview", "directions")
                                                       for n, _ in ra[g].arrays()]  # type: ignore[union-attr]
    for name in names:
        np.testing.assert_array_equal(np.asarray(ra[name][...]), np.asarray(rb[name][...]), err_msg=name)


def test_clean_store_checks_clean(reference):
    assert check_store(reference) == []


@pytest.mark.parametrize("how", ["truncated", "emptied", "deleted"])
@pytest.mark.parametrize("file", ["loss/c/1/0", "loss_stderr/c/2/2", "preview/accuracy/c/0/1", "done/c/1/1"])
def test_damaged_chunk_is_listed_and_its_tile_recomputed(reference, tmp_path, file, how):
    path = copy(reference, tmp_path)
    damage(path / file, how)
    found = check_store(path)
    expected = "not done" if file.startswith("done") and how == "deleted" else \
        "missing" if how == "deleted" else "does not decode"
    assert [(d.file, d.reason) for d in found] == [(file, expected)]
    spec = make_spec([9, 8], metrics=METRICS, preview=2)
    open_store(path, spec)
    repaired = repair_store(path, spec)
    assert repaired.tiles == (0 if expected == "not done" else 1)  # a deleted flag is a pending tile, no damage
    level = "preview" if file.startswith("preview") else ""
    assert not read_surface(path, level).done.all()
    fill_tiles(zarr.open_group(path, mode="r+"), spec)  # what the rerun's sweep writes
    assert check_store(path) == []
    assert_same(reference, path)


def test_all_nan_tile_is_written_so_missing_means_damaged(tmp_path):
    """A diverging tile is all NaN, Zarr's fill value; the store writes its chunk anyway."""
    spec = make_spec([6, 6], metrics=("loss",))
    root = open_store(tmp_path / "s.zarr", spec)
    from engine.store.tiles import write_tile

    write_tile(root, spec.levels[""], (0, 0), {"loss": np.full((3, 3), np.nan, np.float32)})
    assert (tmp_path / "s.zarr" / "loss" / "c" / "0" / "0").is_file()
    assert check_store(tmp_path / "s.zarr")[0].reason == "not done"  # the other three tiles


@pytest.mark.parametrize("file", ["x/c/0", "directions/d0/c/0", "x/zarr.json", "loss/zarr.json", "done/zarr.json"])
def test_damaged_coordinates_directions_and_array_metadata_are_rewritten(reference, tmp_path, file):
    path = copy(reference, tmp_path)
    damage(path / file, "truncated")
    assert file in {d.file for d in check_store(path)}
    spec = make_spec([9, 8], metrics=METRICS, preview=2)
    open_store(path, spec)
    repaired = repair_store(path, spec)
    assert file in {d.file for d in repaired.damage}
    assert repaired.tiles == (9 if file in ("loss/zarr.json", "done/zarr.json") else 0)  # the level's 3x3 tiles
    fill_tiles(zarr.open_group(path, mode="r+"), spec)
    assert check_store(path) == []
    assert_same(reference, path)


def test_damaged_root_or_group_metadata_is_refused_in_one_line(reference, tmp_path):
    path = copy(reference, tmp_path)
    damage(path / "zarr.json", "truncated")
    spec = make_spec([9, 8], metrics=METRICS, preview=2)
    with pytest.raises(UserError, match=r"zarr.json is damaged .*store.overwrite=true") as err:
        open_store(path, spec)
    assert "\n" not in str(err.value)
    assert [d.reason for d in check_store(path)] == ["does not parse"]
    shutil.copy(reference / "zarr.json", path / "zarr.json")
    damage(path / "preview" / "zarr.json", "emptied")
    with pytest.raises(UserError, match=r"preview/zarr.json is damaged"):
        repair_store(path, spec)


def test_partial_files_are_listed_and_removed(reference, tmp_path):
    path = copy(reference, tmp_path)
    (path / "loss" / "c" / "1" / "0.0123abcd.partial").write_bytes(b"\x00")
    assert [d.reason for d in check_store(path)] == ["left by a killed write"]
    spec = make_spec([9, 8], metrics=METRICS, preview=2)
    assert repair_store(path, spec).tiles == 0
    assert check_store(path) == []


def test_readers_see_a_damaged_tile_as_not_done_and_refuse_damaged_arrays(reference, tmp_path, capsys):
    path = copy(reference, tmp_path)
    damage(path / "loss" / "c" / "1" / "0", "truncated")
    surface = read_surface(path)
    assert not surface.done[1, 0] and surface.done.sum() == 8
    assert np.isnan(surface.metrics["accuracy"][3:6, 0:3]).all()
    err = capsys.readouterr().err
    assert "1 damaged tile(s) read as missing" in err and "rerun the same `landscape` command" in err
    surface, state = complete_surface(path)  # the complete preview is drawn instead
    assert surface.done.all() and state
    damage(path / "directions" / "d1" / "c" / "0", "emptied")
    with pytest.raises(UserError, match=r"directions/d1/c/0 is damaged \(does not decode\)"):
        read_directions(path)

"""engine.store.layout, tiles and read without a sweep: a store created from a StoreSpec (arrays, chunks = tiles, NaN
fill, done flags, attributes), reused by the same spec, refused (one line naming what differs) for another config or
other weights, replaced on overwrite, a folder that is no store refused; pending tiles and tile writes (data before
the done flag, resume from the flags); reading surfaces, extra arrays and directions back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import engine
from engine.config.schema import GridConfig, config_hash
from engine.core.errors import UserError
from engine.core.flat import flatten
from engine.sources.losses import METRICS
from engine.store.grid import PREVIEW, make_levels
from engine.store.layout import FORMAT, StoreSpec, open_existing, open_store, store_attrs
from engine.store.read import read_array, read_directions, read_surface
from engine.store.tiles import pending_tiles, pending_work, write_tile

NAMES = ["conv.weight", "fc.bias"]
SHAPES = [(2, 1, 3, 3), (4,)]
PLANE = GridConfig(resolution=[9, 8], tile=[3, 3], preview=2)  # 3x3 full tiles, 2x2 preview tiles
LINE = GridConfig(resolution=[7], tile=[3], preview=0)  # 3 tiles, the last one of 1 point; no preview
TRAJECTORY = np.arange(6.0).reshape(3, 2)


def config(seed: int = 1, **plot: Any) -> dict[str, Any]:
    """A resolved config: direction.seed changes a store's numbers, plot.* does not."""
    return {"model": {"name": "resnet8", "width": 4}, "direction": {"kind": "random", "seed": seed},
            "grid": {"resolution": [9, 8]}, "plot": {"enabled": False, **plot}}


def directions(dtype: torch.dtype = torch.float32) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES] for _ in range(2)]


def spec(cfg: dict[str, Any] | None = None, fingerprint: str = "f00d", grid: GridConfig = PLANE,
         metrics: tuple[str, ...] = METRICS, dirs: list[list[torch.Tensor]] | None = None) -> StoreSpec:
    return StoreSpec(cfg or config(), make_levels(grid), NAMES, SHAPES, dirs or directions(), fingerprint, metrics,
                     attrs={"markers": {"theta*": [0.0, 0.0]}}, arrays={"trajectory/coords": TRAJECTORY})


def tile_values(plan, tile, value: float) -> dict[str, np.ndarray]:
    """Every array of the store (as a sweep writes them): a tile missing one reads as damaged."""
    shape = plan.tile_shape(tile)
    return {"loss": np.full(shape, value, np.float32), "accuracy": np.full(shape, value / 10, np.float32),
            "loss_stderr": np.full(shape, value / 100, np.float32), "accuracy_stderr": np.zeros(shape, np.float32)}


def test_new_store_has_every_array_chunked_by_tile_and_the_attributes(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    made = spec()
    root = open_store(path, made)
    for level, plan in made.levels.items():
        group = root[level] if level else root
        for metric in METRICS:
            arr = group[metric]
            assert (arr.shape, arr.chunks, arr.dtype) == (plan.shape, plan.tile, np.dtype("float32")), (level, metric)
            assert arr.metadata.dimension_names == ("x", "y") and np.isnan(arr[...]).all()
        done = group["done"]
        assert (done.shape, done.chunks, done.dtype) == (plan.tile_grid, (1, 1), np.dtype("uint8"))
        assert done.metadata.dimension_names == ("tile_x", "tile_y") and not done[...].any()
        for dim, coords in zip(("x", "y"), plan.coords):
            assert group[dim].dtype == np.float64 and group[dim].metadata.dimension_names == (dim,)
            np.testing.assert_array_equal(group[dim][...], coords)
    attrs = dict(root.attrs)
    assert attrs == store_attrs(path)
    assert attrs["format"] == FORMAT and attrs["creating"] is False
    assert attrs["config"] == made.config and attrs["config_hash"] == config_hash(made.config)
    assert attrs["fingerprint"] == "f00d" and attrs["engine_version"] == engine.__version__
    assert (attrs["dims"], attrs["tile"], attrs["levels"], attrs["metrics"]) == (
        ["x", "y"], [3, 3], [PREVIEW], ["loss", "accuracy", "loss_stderr", "accuracy_stderr"])
    assert attrs["markers"] == {"theta*": [0.0, 0.0]}
    for k, direction in enumerate(made.directions):
        arr = root[f"directions/d{k}"]
        assert arr.dtype == np.float32 and arr.attrs["names"] == NAMES and arr.attrs["shapes"] == [list(s) for s in
                                                                                                    SHAPES]
        np.testing.assert_array_equal(arr[...], flatten(direction).numpy())
    np.testing.assert_array_equal(root["trajectory/coords"][...], TRAJECTORY)


def test_line_store_with_curvature_maps_and_no_preview(tmp_path: Path) -> None:
    made = spec(grid=LINE, metrics=(*METRICS, "hessian/lambda_max"))
    root = open_store(tmp_path / "line.zarr", made)
    assert PREVIEW not in root and root.attrs["levels"] == [] and root.attrs["dims"] == ["x"]
    lam = root["hessian/lambda_max"]
    assert (lam.shape, lam.chunks, lam.metadata.dimension_names) == ((7,), (3,), ("x",)) and np.isnan(lam[...]).all()
    assert root["done"].shape == (3,) and root["done"].metadata.dimension_names == ("tile_x",)


def test_same_spec_reopens_the_store_and_keeps_its_tiles(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    made = spec()
    plan = made.levels[""]
    write_tile(open_store(path, made), plan, (1, 2), tile_values(plan, (1, 2), 3.0))
    for again in (spec(), spec(config(plot_formats=["png"]))):  # a key that changes no number: the same store
        root = open_store(path, again)
        assert root["done"][1, 2] == 1 and (root["loss"][3:6, 6:8] == 3.0).all()


def test_another_config_is_refused_in_one_line_naming_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    plan = spec().levels[""]
    write_tile(open_store(path, spec()), plan, (0, 0), tile_values(plan, (0, 0), 1.0))
    with pytest.raises(UserError) as refused:
        open_store(path, spec(config(seed=2)))
    message = str(refused.value)
    assert "\n" not in message and "different config (direction.seed: 1 -> 2)" in message, message
    with pytest.raises(UserError) as refused:
        open_store(path, spec(fingerprint="beef"))
    message = str(refused.value)
    assert "\n" not in message and "other weights (fingerprint f00d, now beef)" in message, message
    surface = read_surface(path)  # both refusals left it alone
    assert surface.attrs["config"]["direction"]["seed"] == 1 and surface.done[0, 0] and surface.done.sum() == 1


def test_overwrite_replaces_the_store(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    plan = spec().levels[""]
    write_tile(open_store(path, spec()), plan, (0, 0), tile_values(plan, (0, 0), 1.0))
    root = open_store(path, spec(config(seed=2), fingerprint="beef"), overwrite=True)
    assert root.attrs["config"]["direction"]["seed"] == 2 and root.attrs["fingerprint"] == "beef"
    assert not root["done"][...].any() and np.isnan(root["loss"][...]).all()


def test_a_folder_or_file_that_is_no_store_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "landscape.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"exists and is not a landscape store; remove it or set store\.overwrite"):
        open_store(folder, spec())
    assert (folder / "notes.txt").read_text() == "mine"
    with pytest.raises(UserError, match="is not a landscape store"):
        open_existing(folder)
    plain = tmp_path / "file.zarr"
    plain.write_text("x")
    with pytest.raises(UserError, match="is not a landscape store"):
        open_store(plain, spec())
    assert open_store(folder, spec(), overwrite=True).attrs["format"] == FORMAT
    assert not (folder / "notes.txt").exists()


def test_a_store_left_half_created_is_created_again(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    plan = spec().levels[""]
    write_tile(open_store(path, spec()), plan, (0, 0), tile_values(plan, (0, 0), 1.0))
    zarr.open_group(path, mode="r+").attrs["creating"] = True  # as if the creating job died part way
    with pytest.raises(UserError, match="is not a landscape store"):
        read_surface(path)
    root = open_store(path, spec())
    assert root.attrs["creating"] is False and not root["done"][...].any()


def test_pending_tiles_shrink_as_tiles_are_written_and_resume_from_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    made = spec()
    full, coarse = made.levels[""], made.levels[PREVIEW]
    root = open_store(path, made)
    assert pending_tiles(root, full) == full.tiles() and pending_tiles(root, coarse, PREVIEW) == coarse.tiles()
    assert pending_work(made.levels, root) == [(PREVIEW, t) for t in coarse.tiles()] + [("", t) for t in full.tiles()]
    first = coarse.tiles()[0]
    write_tile(root, coarse, first, tile_values(coarse, first, 2.0), PREVIEW)
    assert pending_tiles(root, coarse, PREVIEW) == coarse.tiles()[1:] and pending_tiles(root, full) == full.tiles()
    loss = root[PREVIEW]["loss"][...]
    assert (loss[coarse.tile_slices(first)] == 2.0).all() and np.isnan(loss).sum() == loss.size - 9
    assert (root[PREVIEW]["accuracy"][coarse.tile_slices(first)] == np.float32(0.2)).all()
    assert np.isnan(root["loss"][...]).all()  # the full grid is another level
    written = [full.tiles()[k] for k in (0, 4, 8)]
    for k, t in enumerate(written):
        write_tile(root, full, t, tile_values(full, t, float(k)))
    resumed = open_store(path, spec())  # a rerun: only the unwritten tiles are pending, still coarse to fine
    assert pending_work(made.levels, resumed) == ([(PREVIEW, t) for t in coarse.tiles()[1:]]
                                                  + [("", t) for t in full.tiles() if t not in written])
    ragged = (2, 2)  # the last tile along y holds 2 of the 8 points
    write_tile(resumed, full, ragged, tile_values(full, ragged, 5.0))
    assert full.tile_shape(ragged) == (3, 2) and (read_surface(path).metrics["loss"][6:9, 6:8] == 5.0).all()


class Recorder(dict):
    """Stands in for a zarr group and logs the order in which write_tile stores into its arrays."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    def __getitem__(self, name: str) -> Any:
        log = self.log

        class Async:
            async def setitem(self, index: Any, value: Any) -> None:
                log.append(name)

        class Array:
            async_array = Async()

            def __setitem__(self, index: Any, value: Any) -> None:
                log.append(name)

        return Array()


def test_a_tile_is_written_data_first_then_its_done_flag(tmp_path: Path) -> None:
    plan = spec().levels[""]
    recorder = Recorder()
    write_tile(recorder, plan, (1, 1), tile_values(plan, (1, 1), 1.0))
    assert sorted(recorder.log[:2]) == ["accuracy", "loss"] and recorder.log[2:] == ["done"]  # data concurrently
    root = open_store(tmp_path / "landscape.zarr", spec())
    broken = {"loss": np.ones((3, 3), np.float32), "accuracy": np.ones((2, 2), np.float32)}  # the second write fails
    with pytest.raises(Exception):  # noqa: B017 (zarr's own error for a mis-shaped chunk)
        write_tile(root, plan, (1, 1), broken)
    assert not root["done"][...].any()  # no flag for a tile whose data did not all land
    assert (1, 1) in pending_tiles(root, plan)


def test_read_back_surfaces_arrays_and_directions(tmp_path: Path) -> None:
    path = tmp_path / "landscape.zarr"
    made = spec(dirs=directions(torch.float64))  # float64 directions are stored, and read back, as float32
    root = open_store(path, made)
    full, coarse = made.levels[""], made.levels[PREVIEW]
    write_tile(root, full, (0, 1), tile_values(full, (0, 1), 4.0))
    surface = read_surface(path)
    for got, want in zip(surface.coords, full.coords):
        np.testing.assert_array_equal(got, want)
    assert set(surface.metrics) == set(METRICS) and surface.metrics["loss"].shape == (9, 8)
    assert (surface.metrics["loss"][0:3, 3:6] == 4.0).all() and np.isnan(surface.metrics["loss"]).sum() == 72 - 9
    assert surface.done.dtype == bool and surface.done.tolist() == [[False, True, False]] + [[False] * 3] * 2
    assert surface.attrs["fingerprint"] == "f00d"
    preview = read_surface(path, PREVIEW)
    assert preview.metrics["loss"].shape == coarse.shape and not preview.done.any()
    np.testing.assert_array_equal(read_array(path, "trajectory/coords"), TRAJECTORY)
    assert read_array(path, "trajectory/nothing") is None
    back = read_directions(path)
    assert len(back) == 2
    for stored, original in zip(back, made.directions):
        assert list(stored) == NAMES
        for name, shape, tensor in zip(NAMES, SHAPES, original):
            assert stored[name].dtype == torch.float32 and tuple(stored[name].shape) == shape
            assert torch.equal(stored[name], tensor.float())  # bit for bit
    line = tmp_path / "line.zarr"
    open_store(line, spec(grid=LINE))
    with pytest.raises(UserError, match="has no 'preview' level"):
        read_surface(line, PREVIEW)
    with pytest.raises(UserError, match="is not a landscape store"):
        read_surface(tmp_path / "nothing.zarr")


def test_store_made_before_standard_errors_reopens_and_keeps_none(tmp_path: Path) -> None:
    """A store of ("loss", "accuracy") (as made before standard errors) is reopened by today's spec, which lists
    loss_stderr and accuracy_stderr: no refusal, and a tile holding standard errors writes only the arrays the store
    has (none half-filled)."""
    path = tmp_path / "landscape.zarr"
    before = spec(metrics=("loss", "accuracy"))
    plan = before.levels[""]
    write_tile(open_store(path, before), plan, (0, 0), tile_values(plan, (0, 0), 1.0))
    root = open_store(path, spec())
    shape = plan.tile_shape((1, 1))
    with_se = tile_values(plan, (1, 1), 2.0) | {"loss_stderr": np.full(shape, 0.1, np.float32),
                                                 "accuracy_stderr": np.full(shape, 0.01, np.float32)}
    write_tile(root, plan, (1, 1), with_se)
    assert root.attrs["metrics"] == ["loss", "accuracy"] and "loss_stderr" not in root
    assert root["done"][1, 1] == 1 and root["loss"][plan.tile_slices((1, 1))].max() == 2.0


def test_tiles_written_through_arrays_kept_open_equal_tiles_written_alone(tmp_path: Path) -> None:
    """A sweep keeps each array open across its tiles (write_tile's `arrays`): the stores come out the same, every
    level's done flags included, and a store without standard-error arrays still gets none."""
    stores = {}
    for name, keep in (("alone", False), ("kept", True)):
        for metrics in (METRICS, ("loss", "accuracy")):
            root = open_store(tmp_path / f"{name}-{len(metrics)}.zarr", spec(metrics=metrics))
            arrays: dict[str, Any] | None = {} if keep else None
            for level, plan in spec().levels.items():
                for k, tile in enumerate(plan.tiles()):
                    write_tile(root, plan, tile, tile_values(plan, tile, float(k)), level, arrays)
            stores[name, len(metrics)] = root
    for n in (2, len(METRICS)):
        a, b = stores["alone", n], stores["kept", n]
        assert sorted(a.array_keys()) == sorted(b.array_keys())
        assert ("loss_stderr" in a) == (n > 2)
        for level in ("", PREVIEW):
            ga, gb = (a, b) if not level else (a[level], b[level])
            for key in ga.array_keys():
                np.testing.assert_array_equal(ga[key][...], gb[key][...], err_msg=f"{level}/{key}")
            assert ga["done"][...].all()


def test_a_direction_written_by_several_writers_each_its_chunks_equals_one_writer(tmp_path: Path) -> None:
    """What the S ranks of a shard group do: the array made once, then each writer fills the chunks i with
    i % S == its part from the same whole tensors; until every part is in, the direction reads as damaged."""
    from engine.store.integrity import DENSE, array_damage
    from engine.store.layout import create_direction, fill_direction

    made = spec()
    one = zarr.open_group(tmp_path / "one.zarr", mode="w", zarr_format=3)
    fill_direction(create_direction(one, 0, made, chunk=5), made.directions[0])
    many = zarr.open_group(tmp_path / "many.zarr", mode="w", zarr_format=3)
    many.attrs[DENSE] = True  # as a store's root says: every chunk of a direction is written
    create_direction(many, 0, made, chunk=5)
    for part in (2, 0):
        fill_direction(zarr.open_group(tmp_path / "many.zarr", mode="r+")["directions/d0"], made.directions[0],
                       part, 3)
    assert array_damage(many, tmp_path / "many.zarr", "directions/d0", dense=True)  # part 1 not written yet
    fill_direction(zarr.open_group(tmp_path / "many.zarr", mode="r+")["directions/d0"], made.directions[0], 1, 3)
    assert not array_damage(many, tmp_path / "many.zarr", "directions/d0", dense=True)
    a, b = one["directions/d0"], many["directions/d0"]
    assert a.nchunks == b.nchunks == 5  # 22 entries in chunks of 5
    np.testing.assert_array_equal(a[...], b[...])
    np.testing.assert_array_equal(b[...], flatten(made.directions[0]).numpy())
    assert dict(b.attrs) == {"names": NAMES, "shapes": [list(s) for s in SHAPES]}

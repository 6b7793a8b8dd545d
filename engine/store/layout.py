"""The Zarr v3 store of one run: metric arrays chunked by tile, per-tile done flags, coordinates, directions.

Layout (docs/architecture.md): `loss`, `accuracy` of the grid's shape with one chunk per tile, and the standard
errors of those that are means over items, `loss_stderr`, `accuracy_stderr`, chunked alike (stores made before
them have none and keep none when resumed); `done` with one flag (and one chunk) per tile, written after the tile's
data; `x`, `y` coordinates; `directions/d<k>`
flat vectors with the tensor names and shapes in their attributes; `hessian/lambda_max`, `lambda_min`,
`ratio` (curvature maps, when asked for) are chunked by tile like the metrics, and `hessian/` also holds
the spectra at theta* (engine/store/spectra.py); `preview/` holds the same arrays for
the coarse preview lattice swept first (grid.preview). Root attributes hold the resolved
config, its hash, the engine version and the fingerprint of theta*. Every array records dimension
names, so `xarray.open_zarr(path)` reads the surfaces with their coordinates.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
import zarr

from engine.config.schema import config_diff, config_hash
from engine.core.errors import UserError
from engine.core.flat import flat_chunks
from engine.core.version import VERSION
from engine.sources.losses import METRICS
from engine.store.grid import GridPlan
from engine.store.integrity import DENSE, metadata_damage

DENSE_WRITES = {"array.write_empty_chunks": True}  # every chunk written, so a missing one is damage (integrity.py)

DIRECTION_CHUNK = 1 << 22  # entries per chunk of a stored direction (16 MB of float32)
FORMAT = "landscape-engine/1"  # a landscape store (landscape.zarr)
SPECTRUM_FORMAT = "landscape-engine/spectrum/1"  # a spectrum-only store (landscape-spectrum's spectrum.zarr)


@dataclass
class StoreSpec:
    """Everything a new store is created from; compared against an existing store before reuse."""

    config: dict[str, Any]
    levels: dict[str, GridPlan]  # '' is the full grid; 'preview' the coarse lattice, when there is one
    names: list[str]
    shapes: list[tuple[int, ...]]
    directions: list[list[torch.Tensor]]
    fingerprint: str
    metrics: tuple[str, ...] = METRICS  # arrays of the grid's shape: "<m>_stderr" ones for standard errors,
    # "hessian/..." ones for curvature maps
    attrs: dict[str, Any] = field(default_factory=dict)  # extra root attributes: markers, axis labels, ...
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # extra arrays, e.g. trajectory/coords
    deferred: int = 0  # directions no rank holds whole (a sharded load): written after creation by write_direction
    # from tensors gathered one at a time, by every rank of the shard group together; `directions` is then empty


def open_store(path: str | Path, spec: StoreSpec, overwrite: bool = False) -> zarr.Group:
    """Open the run's store for writing: reuse it if it was made by the same config and weights, else create.

    A store made by another config or other weights is refused (naming what differs) unless overwrite.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            refuse_damaged_root(path)
        attrs = store_attrs(path)
        if attrs is None or attrs.get("creating"):
            if attrs is None and not overwrite:
                raise UserError(f"{path} exists and is not a landscape store; remove it or set store.overwrite=true")
        elif not overwrite:
            _check_same(path, attrs, spec)
            return zarr.open_group(path, mode="r+")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return _create(path, spec)


def store_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes of a landscape store at path, or None when it is none."""
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        return None
    return attrs if attrs.get("format") == FORMAT else None


def refuse_damaged_root(path: Path) -> None:
    """A store whose root zarr.json does not parse is refused in one line: it holds the config the store was made
    with, so nothing in it can be trusted to be this run's."""
    damage = metadata_damage(path, "")
    if damage is not None:
        raise UserError(f"store {path}: {damage.file} is damaged ({damage.reason}); set store.overwrite=true to "
                        "recompute the store, or remove it")


def _check_same(path: Path, attrs: dict[str, Any], spec: StoreSpec) -> None:
    was, now = attrs["config"].get("data", {}).get("fingerprint"), spec.config.get("data", {}).get("fingerprint")
    if now is not None and was != now:
        raise UserError(
            f"store {path} was computed on other data (data fingerprint {was}, now {now}): the eval set changed; "
            "set store.overwrite=true to replace it, or pick another name="
        )
    if attrs["config_hash"] != config_hash(spec.config):
        raise UserError(
            f"store {path} was written by a different config ({config_diff(attrs['config'], spec.config)}); "
            "rerun with that config to resume, or set store.overwrite=true to replace it, or pick another name="
        )
    if attrs["fingerprint"] != spec.fingerprint:
        raise UserError(
            f"store {path} was computed from other weights (fingerprint {attrs['fingerprint']}, now "
            f"{spec.fingerprint}); the checkpoint changed: set store.overwrite=true to replace it, "
            "or pick another name="
        )


def create_tile_array(group: zarr.Group, name: str, plan: GridPlan) -> None:
    """A metric (or standard-error, or curvature-map) array of a level: one chunk per tile, NaN until computed."""
    group.create_array(name, shape=plan.shape, chunks=plan.tile, dtype="float32", fill_value=np.nan,
                       dimension_names=plan.dims, overwrite=True)


def create_done(group: zarr.Group, plan: GridPlan) -> None:
    """A level's done flags, one per tile (and one chunk per flag), all unset."""
    group.create_array("done", shape=plan.tile_grid, chunks=(1,) * plan.ndim, dtype="uint8", fill_value=0,
                       dimension_names=tuple(f"tile_{d}" for d in plan.dims), overwrite=True)


def write_coords(group: zarr.Group, plan: GridPlan) -> None:
    """A level's coordinate arrays (x, y) from the plan, replacing any there."""
    with zarr.config.set(DENSE_WRITES):
        for dim, coords in zip(plan.dims, plan.coords):
            group.create_array(dim, shape=coords.shape, dtype="float64", dimension_names=(dim,),
                               overwrite=True)[:] = coords


def write_direction(root: zarr.Group, k: int, spec: StoreSpec, tensors: Iterable[torch.Tensor] | None = None) -> None:
    """Direction d<k> of the spec (or the given tensors, whole, in the spec's order) as a flat float32 vector, with
    the tensor names and shapes in its attributes; written chunk by chunk, so no copy of the whole direction is made."""
    fill_direction(create_direction(root, k, spec), spec.directions[k] if tensors is None else tensors)


def create_direction(root: zarr.Group, k: int, spec: StoreSpec, chunk: int = DIRECTION_CHUNK) -> zarr.Array:
    """The empty array of direction d<k> (replacing any there), its names and shapes in its attributes: until every
    chunk is written it reads as damaged (dense), so a write cut short is found and redone."""
    size = sum(math.prod(shape) for shape in spec.shapes)
    with zarr.config.set(DENSE_WRITES):  # an all-zero chunk is written too: a missing one is damage
        arr = root.create_array(f"directions/d{k}", shape=(size,), chunks=(max(1, min(size, chunk)),),
                                dtype="float32", dimension_names=("param",), overwrite=True)
    arr.attrs.update({"names": spec.names, "shapes": [list(s) for s in spec.shapes]})
    return arr


def fill_direction(arr: zarr.Array, tensors: Iterable[torch.Tensor], part: int = 0, parts: int = 1) -> None:
    """Write the whole tensors, flattened in order, into a direction's array: only the chunks i with i % parts ==
    part, so `parts` writers that each see the same tensors fill it together, each its own chunks, in parallel."""
    chunk = arr.chunks[0]
    with zarr.config.set(DENSE_WRITES):
        for start, values in flat_chunks(tensors, chunk):
            if (start // chunk) % parts == part:
                arr[start:start + len(values)] = values


def write_deferred(path: Path, k: int, spec: StoreSpec, tensors: Iterable[torch.Tensor], part: int = 0,
                   parts: int = 1, create: bool = True) -> None:
    """Deferred direction d<k> of an accepted store, from its whole tensors handed over one at a time: `create`
    makes its array (one writer, before the others start), then this writer fills its part of the chunks."""
    with zarr.config.set(DENSE_WRITES):
        root = zarr.open_group(path, mode="r+")
        arr = create_direction(root, k, spec) if create else cast(zarr.Array, root[f"directions/d{k}"])
    fill_direction(arr, tensors, part, parts)


def _create_level(group: zarr.Group, plan: GridPlan, metrics: tuple[str, ...]) -> None:
    for metric in metrics:
        create_tile_array(group, metric, plan)
    create_done(group, plan)
    write_coords(group, plan)


def _create(path: Path, spec: StoreSpec) -> zarr.Group:
    plan = spec.levels[""]
    root = zarr.open_group(path, mode="w", zarr_format=3)
    root.attrs.update({"format": FORMAT, "creating": True})
    for level, level_plan in spec.levels.items():
        _create_level(root.create_group(level) if level else root, level_plan, spec.metrics)
    for k in range(len(spec.directions)):
        write_direction(root, k, spec)
    for name, array in spec.arrays.items():
        root.create_array(name, shape=array.shape, dtype=array.dtype)[...] = array
    root.attrs.update({
        **spec.attrs,
        "creating": False,
        "config": spec.config,
        "config_hash": config_hash(spec.config),
        "engine_version": VERSION,
        "fingerprint": spec.fingerprint,
        "dims": list(plan.dims),
        "tile": list(plan.tile),
        "levels": [level for level in spec.levels if level],
        "metrics": list(spec.metrics),
        DENSE: True,
    })
    return root


def level_group(root: zarr.Group, level: str) -> zarr.Group:
    """The group holding one level's arrays: the root for the full grid, root[level] for 'preview'."""
    return cast(zarr.Group, root[level]) if level else root


def open_existing(path: str | Path, mode: Literal["r", "r+"] = "r") -> zarr.Group:
    """A finished landscape store, for reading ('r') or for adding results to it ('r+'); refused otherwise."""
    path = Path(path)
    if path.exists():
        refuse_damaged_root(path)
    attrs = store_attrs(path) if path.exists() else None
    if attrs is None or attrs.get("creating"):
        raise UserError(f"{path} is not a landscape store (expected a .zarr folder written by `landscape`)")
    return zarr.open_group(path, mode=mode)


def set_attribute(path: str | Path, key: str, value: Any) -> None:
    """Store one result (e.g. epsilon_sharpness) in a store's root attributes."""
    open_existing(path, "r+").attrs[key] = value


def get_attribute(path: str | Path, key: str) -> Any:
    """One result from a store's root attributes, or None when the store has none."""
    return open_existing(path).attrs.get(key)

"""Repair on reopen: what a reused store holds that does not decode is recomputed by the same command.

Rank 0 runs `repair_store` after `open_store` accepted the store and before the barrier, so every rank then sees
the cleared done flags. A damaged tile (a chunk of any tile-chunked array, or its done flag) gets its flag cleared
and is swept again; damaged coordinates are rewritten from the grid plan and damaged directions from the run's own
(the same config and weights made them: open_store checked both); a damaged metric or done array's metadata is
recreated, which clears every flag of its level. A damaged group (preview/, directions/, hessian/) is refused in
one line: its attributes cannot be recomputed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import zarr

from engine.core.errors import UserError
from engine.sources.losses import is_stderr
from engine.store.grid import GridPlan
from engine.store.integrity import (
    Damage,
    array_damage,
    metadata_damage,
    open_array,
    partial_files,
    tile_damage,
)
from engine.store.layout import StoreSpec, create_done, create_tile_array, level_group, write_coords, write_direction

GROUPS = ("preview", "directions", "hessian", "trajectory")


@dataclass
class Repair:
    """What repair_store found: the tiles whose done flags it cleared, and every damaged file."""

    tiles: int = 0
    damage: list[Damage] = field(default_factory=list)
    directions: list[int] = field(default_factory=list)  # deferred directions to write (absent or damaged)


def repair_store(path: Path, spec: StoreSpec) -> Repair:
    """Clear the done flags of damaged tiles, rewrite damaged coordinates and directions, remove `*.partial` files;
    returns what was found. Refuses (UserError) a damaged group's metadata, naming the file."""
    out = Repair()
    for partial in partial_files(path):
        out.damage.append(Damage(str(partial.relative_to(path)), "left by a killed write"))
        partial.unlink()
    for group in GROUPS:
        damage = metadata_damage(path, group)
        if damage is not None:
            raise UserError(f"store {path}: {damage.file} is damaged ({damage.reason}); set store.overwrite=true "
                            "to recompute the store, or remove it")
    root = zarr.open_group(path, mode="r+")
    for level, plan in spec.levels.items():
        out.tiles += _repair_level(path, root, level, plan, spec.metrics, out.damage)
    for k in range(len(spec.directions)):
        found = array_damage(root, path, f"directions/d{k}", dense=True)
        if found:
            out.damage += found
            write_direction(root, k, spec)
    for k in range(spec.deferred):  # written by the shard group together once this returns
        found = array_damage(root, path, f"directions/d{k}", dense=True)
        if found:
            out.directions.append(k)
            out.damage += [] if found[0].reason == "missing" and found[0].file.endswith("zarr.json") else found
    return out


def _repair_level(path: Path, root: zarr.Group, level: str, plan: GridPlan, metrics: tuple[str, ...],
                  damage: list[Damage]) -> int:
    """Repair one level; returns how many of its tiles were done and are now pending again."""
    prefix = f"{level}/" if level else ""
    group = level_group(root, level)
    coords = [d for dim in plan.dims for d in array_damage(root, path, prefix + dim, dense=True)]
    if coords:
        damage += coords
        write_coords(group, plan)
    names, reset = [], []
    for name in metrics:
        arr = open_array(root, path, prefix + name)
        if arr is None and is_stderr(name):
            continue  # a store made before standard errors: resumed without them
        if not isinstance(arr, zarr.Array):
            reset.append(arr or Damage(f"{prefix}{name}/zarr.json", "missing"))
            create_tile_array(group, name, plan)
        names.append(name)
    done_arr = open_array(root, path, prefix + "done")
    if not isinstance(done_arr, zarr.Array):
        damage.append(done_arr or Damage(f"{prefix}done/zarr.json", "missing"))
        create_done(group, plan)
        return len(plan.tiles())
    done, damaged = tile_damage(root, path, level, names)
    if reset:
        damage += reset
        was_done = int(done.sum())
        create_done(group, plan)
        return was_done
    flags = cast(zarr.Array, group["done"])
    for tile, found in damaged.items():
        damage.append(found)
        flags[tuple(slice(i, i + 1) for i in tile)] = 0
    return len(damaged)

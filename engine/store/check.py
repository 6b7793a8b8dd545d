"""`landscape-check`'s work: every chunk of every array of a landscape or spectrum store decoded, and what is
damaged listed (file and why: does not decode, wrong size, missing, does not parse, not done, left by a killed
write). Read-only: the same `landscape` command repairs what it lists (engine/store/repair.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.core.errors import UserError
from engine.store.integrity import (
    Damage,
    array_damage,
    chunk_file,
    metadata_damage,
    open_array,
    partial_files,
    store_attributes,
    tile_damage,
)
from engine.store.layout import FORMAT, SPECTRUM_FORMAT

DENSE_PREFIXES = ("directions/",)  # whole arrays the store writes every chunk of (with the coordinates)


def check_store(path: str | Path) -> list[Damage]:
    """Everything damaged or not done in the store at path (empty: clean); refuses a path that is no store."""
    store = Path(path)
    if not (store / "zarr.json").is_file() and metadata_damage(store, "") is None:
        raise UserError(f"{store} is not a landscape or spectrum store (no zarr.json)")
    root_damage = metadata_damage(store, "")
    if root_damage is not None:
        return [root_damage]
    attrs = store_attributes(store)
    if attrs.get("format") not in (FORMAT, SPECTRUM_FORMAT):
        raise UserError(f"{store} is not a landscape or spectrum store (format {attrs.get('format')!r})")
    root = zarr.open_group(store, mode="r")
    found = [Damage(str(p.relative_to(store)), "left by a killed write") for p in partial_files(store)]
    tiled: set[str] = set()
    if attrs.get("format") == FORMAT:
        found += _tiles(root, store, attrs, tiled)
    for meta in sorted(store.rglob("zarr.json")):
        name = str(meta.parent.relative_to(store)) if meta.parent != store else ""
        if not name or name in tiled:
            continue
        damage = metadata_damage(store, name)
        if damage is not None:
            found.append(damage)
        elif json.loads(meta.read_bytes()).get("node_type") == "array":
            dims = tuple(attrs.get("dims", ()))
            dense = name.startswith(DENSE_PREFIXES) or name.rsplit("/", 1)[-1] in dims
            found += array_damage(root, store, name, dense)
    return found


def _tiles(root: zarr.Group, store: Path, attrs: dict[str, Any], tiled: set[str]) -> list[Damage]:
    """Damaged and not-done tiles of every level; the tile-chunked arrays checked are added to `tiled`."""
    found: list[Damage] = []
    metrics = [str(m) for m in attrs.get("metrics", [])]
    for level in ["", *attrs.get("levels", [])]:
        prefix = f"{level}/" if level else ""
        done_arr = open_array(root, store, prefix + "done")
        if not isinstance(done_arr, zarr.Array):
            continue  # its zarr.json is listed with the other metadata
        names = [m for m in metrics if isinstance(open_array(root, store, prefix + m), zarr.Array)]
        tiled.update(prefix + n for n in ["done", *names])
        done, damaged = tile_damage(root, store, level, names)
        found += list(damaged.values())
        pending = [tuple(int(i) for i in t) for t in np.argwhere(~done)]
        found += [Damage(chunk_file(done_arr, t), "not done") for t in pending if t not in damaged]
    return found

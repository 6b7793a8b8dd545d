"""Finding damage in a store: chunks that do not decode, have the wrong size or are missing, metadata that does not
parse, and `*.partial` files a killed write left behind.

What a node dying mid-write leaves on a shared file system is a truncated or empty chunk file. Zarr >= 3.1.3 writes
each chunk to `<key>.<uuid>.partial` and renames it into place, so on a local disk a chunk is whole or absent, but
rename is not atomic everywhere and nothing is fsync'ed: the check does not trust it.

Missing versus fill value: Zarr leaves out a chunk equal to the fill value (an all-NaN tile of a diverging corner).
Stores made with `dense_chunks` in their attributes are written with write_empty_chunks, so there every chunk of a
done tile, the coordinates and the directions exists and a missing one is damage; in an older store a missing chunk
reads as its fill value, as it always did.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from engine.core.errors import UserError

DENSE = "dense_chunks"  # root attribute: every chunk written, even one equal to the fill value
Tile = tuple[int, ...]


@dataclass(frozen=True)
class Damage:
    """One damaged file of a store, relative to the store's folder, and why."""

    file: str
    reason: str  # "does not decode", "wrong size", "missing", "does not parse", "not done", "left by a killed write"

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def chunk_file(arr: zarr.Array, index: Tile) -> str:
    """The file of one chunk, relative to the store's folder (e.g. preview/loss/c/1/0)."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key(index)}"


def chunk_indices(arr: zarr.Array) -> Iterator[Tile]:
    """Every chunk index of an array, row-major."""
    return itertools.product(*(range(-(-n // c)) for n, c in zip(arr.shape, arr.chunks)))


def _reason(err: Exception) -> str:
    return "wrong size" if "reshape" in str(err) or "size" in str(err) else "does not decode"


def read_chunked(arr: zarr.Array) -> tuple[np.ndarray, dict[Tile, str]]:
    """The array's values and its chunks that do not decode (with why), those read as the fill value. One read
    when every chunk decodes, chunk by chunk otherwise."""
    try:
        return np.asarray(arr[...]), {}
    except Exception:
        pass
    out = np.full(arr.shape, arr.fill_value, dtype=arr.dtype)
    bad: dict[Tile, str] = {}
    for index in chunk_indices(arr):
        sl = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, arr.chunks, arr.shape))
        try:
            out[sl] = np.asarray(arr[sl])
        except Exception as err:
            bad[index] = _reason(err)
    return out, bad


def undecodable_chunks(arr: zarr.Array) -> dict[Tile, str]:
    """The array's chunks that do not decode (with why), read one chunk at a time and let go of: checking a large
    model's direction holds one chunk of it, never the whole vector."""
    bad: dict[Tile, str] = {}
    for index in chunk_indices(arr):
        sl = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, arr.chunks, arr.shape))
        try:
            arr[sl]
        except Exception as err:
            bad[index] = _reason(err)
    return bad


def missing_chunks(store: Path, arr: zarr.Array, indices: Iterator[Tile] | list[Tile]) -> dict[Tile, str]:
    """Those of the chunks at indices whose file is absent."""
    return {i: "missing" for i in indices if not (store / chunk_file(arr, i)).is_file()}


def metadata_damage(store: Path, name: str) -> Damage | None:
    """The zarr.json of a group or array (name relative to the store, '' for the root) when it does not parse."""
    path = store / name / "zarr.json" if name else store / "zarr.json"
    try:
        json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (ValueError, OSError):
        return Damage(str(path.relative_to(store)), "does not parse")
    return None


def open_array(root: zarr.Group, store: Path, name: str) -> zarr.Array | Damage | None:
    """Array `name` of the store; its damage when its zarr.json does not parse; None when it does not exist."""
    damage = metadata_damage(store, name)
    if damage is not None:
        return damage
    if not (store / name / "zarr.json").is_file():
        return None
    try:
        return cast(zarr.Array, root[name])
    except Exception:
        return Damage(f"{name}/zarr.json", "does not parse")


def tile_damage(root: zarr.Group, store: Path, level: str, names: list[str]) -> tuple[np.ndarray, dict[Tile, Damage]]:
    """One level's done flags (a flag whose chunk does not decode reads as not done) and its damaged tiles: a done
    flag that does not decode, or a done tile whose chunk of one of `names` (tile-chunked arrays) does not decode,
    has the wrong size or (in a dense store) is missing. Damaged metadata is left to the caller (open_array)."""
    prefix = f"{level}/" if level else ""
    done_arr = cast(zarr.Array, root[f"{prefix}done"])
    done, bad = read_chunked(done_arr)
    damaged = {t: Damage(chunk_file(done_arr, t), reason) for t, reason in bad.items()}
    done = done.astype(bool)
    for t in damaged:
        done[t] = False
    dense = bool(root.attrs.get(DENSE, False))
    for name in names:
        arr = open_array(root, store, prefix + name)
        if not isinstance(arr, zarr.Array):
            continue
        problems = read_chunked(arr)[1]
        if dense:
            problems = {**missing_chunks(store, arr, [tuple(map(int, t)) for t in np.argwhere(done)]), **problems}
        for t, reason in problems.items():
            if done[t] and t not in damaged:
                damaged[t] = Damage(chunk_file(arr, t), reason)
    return done, damaged


def array_damage(root: zarr.Group, store: Path, name: str, dense: bool = False) -> list[Damage]:
    """Damage of a whole array (coordinates, a direction, a spectrum): metadata that does not parse or is absent,
    chunks that do not decode and, when `dense` (the store writes every chunk of it), missing chunks."""
    arr = open_array(root, store, name)
    if arr is None:
        return [Damage(f"{name}/zarr.json", "missing")]
    if isinstance(arr, Damage):
        return [arr]
    bad = undecodable_chunks(arr)
    if dense and root.attrs.get(DENSE, False):
        bad = {**missing_chunks(store, arr, list(chunk_indices(arr))), **bad}
    return [Damage(chunk_file(arr, i), reason) for i, reason in bad.items()]


def read_whole(root: zarr.Group, store: Path, name: str, dense: bool = False) -> np.ndarray:
    """An array that is not cut into tiles (coordinates, a direction, a spectrum), for a reader; refused in one line
    naming the file when it is damaged."""
    damage = array_damage(root, store, name, dense)
    if damage:
        raise UserError(f"store {store}: {damage[0].file} is damaged ({damage[0].reason}); rerun the same "
                        "`landscape` command to recompute it, or set store.overwrite=true")
    return np.asarray(cast(zarr.Array, root[name])[...])


def partial_files(store: Path) -> list[Path]:
    """Temporary files of writes that never finished (Zarr's `<key>.<uuid>.partial`)."""
    return sorted(store.rglob("*.partial"))


def summary_line(damaged: list[Damage], limit: int = 3) -> str:
    """The first few damaged files and why, for a one-line message."""
    more = f", and {len(damaged) - limit} more" if len(damaged) > limit else ""
    return ", ".join(map(str, damaged[:limit])) + more


def store_attributes(store: Path) -> dict[str, Any]:
    """The root attributes of a store whose root zarr.json parses ({} when it has none)."""
    return dict(zarr.open_group(store, mode="r").attrs)

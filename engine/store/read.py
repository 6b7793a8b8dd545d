"""Reading a finished store back as numpy: one level's surfaces, extra arrays, and the saved directions."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import zarr

from engine.core.errors import UserError
from engine.core.flat import unflatten
from engine.sources.losses import is_stderr, stderr_name
from engine.store.integrity import Damage, open_array, read_chunked, read_whole, summary_line, tile_damage
from engine.store.layout import level_group, open_existing


def read_directions(path: str | Path) -> list[dict[str, torch.Tensor]]:
    """The directions saved in a store, as a list of {tensor name: tensor}; a damaged one is refused in one line."""
    root = open_existing(path)
    out = []
    for k in range(len(list(cast(zarr.Group, root["directions"]).array_keys()))):
        flat = read_whole(root, Path(path), f"directions/d{k}", dense=True)
        arr = cast(zarr.Array, root[f"directions/d{k}"])
        names = cast("list[str]", arr.attrs["names"])
        shapes = [tuple(s) for s in cast("list[list[int]]", arr.attrs["shapes"])]
        out.append(dict(zip(names, unflatten(torch.from_numpy(flat), shapes))))
    return out


@dataclass
class Surface:
    """What a store holds, read back as numpy: coordinates, metric arrays, done flags and attributes."""

    coords: tuple[np.ndarray, ...]
    metrics: dict[str, np.ndarray]
    done: np.ndarray
    attrs: dict[str, Any]

    def stderr(self, metric: str) -> np.ndarray | None:
        """The standard errors of a metric's mean at every point (`<metric>_stderr`), or None when the store has
        none (a loss without per-item values, a metric that is no mean over items, a store made before them)."""
        return self.metrics.get(stderr_name(metric))

    def plain(self) -> list[str]:
        """The loss's own metrics, loss first: neither standard errors nor hessian/ curvature maps."""
        return [m for m in self.metrics if not m.startswith("hessian/") and not is_stderr(m)]


def read_surface(path: str | Path, level: str = "") -> Surface:
    """Read one level of a store (the full grid by default, or 'preview'); not for writing. A damaged tile reads
    as not done (NaN), with a one-line warning; damaged coordinates or metadata are refused in one line."""
    root, store = open_existing(path), Path(path)
    attrs: dict[str, Any] = dict(root.attrs)
    if level and level not in attrs.get("levels", []):
        raise UserError(f"store {path} has no {level!r} level")
    prefix = f"{level}/" if level else ""
    group = level_group(root, level)
    coords = tuple(read_whole(root, store, prefix + d, dense=True) for d in attrs["dims"])
    for name in ("done", *attrs["metrics"]):
        arr = open_array(root, store, prefix + name)
        if isinstance(arr, Damage):
            raise UserError(f"store {path}: {arr.file} is damaged ({arr.reason}); set store.overwrite=true and "
                            "rerun the same `landscape` command to recompute the store")
    done, damaged = tile_damage(root, store, level, list(attrs["metrics"]))
    metrics = {m: read_chunked(cast(zarr.Array, group[m]))[0] for m in attrs["metrics"]}
    chunks = cast(zarr.Array, group[attrs["metrics"][0]]).chunks
    for t in damaged:
        done[t] = False
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(t, chunks))
        for values in metrics.values():
            values[sl] = np.nan
    if damaged and (str(store), level) not in _WARNED:
        _WARNED.add((str(store), level))
        print(f"warning: store {path}: {len(damaged)} damaged tile(s) read as missing "
              f"({summary_line(list(damaged.values()))}); rerun the same `landscape` command to recompute them",
              file=sys.stderr)
    return Surface(coords, metrics, done, attrs)


_WARNED: set[tuple[str, str]] = set()  # (store, level) already warned about in this process


def read_array(path: str | Path, name: str) -> np.ndarray | None:
    """An extra array of a store (e.g. trajectory/coords), or None when the store has none."""
    root = open_existing(path)
    if open_array(root, Path(path), name) is None:
        return None
    return read_whole(root, Path(path), name)

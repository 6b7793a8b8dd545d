"""Reading a finished store back as numpy: one level's surfaces, extra arrays, and the saved directions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import zarr

from engine.core.errors import UserError
from engine.core.flat import unflatten
from engine.sources.losses import is_stderr, stderr_name
from engine.store.layout import level_group, open_existing


def read_directions(path: str | Path) -> list[dict[str, torch.Tensor]]:
    """The directions saved in a store, as a list of {tensor name: tensor}."""
    root = open_existing(path)
    group = cast(zarr.Group, root["directions"])
    out = []
    for k in range(len(list(group.array_keys()))):
        arr = cast(zarr.Array, group[f"d{k}"])
        names = cast("list[str]", arr.attrs["names"])
        shapes = [tuple(s) for s in cast("list[list[int]]", arr.attrs["shapes"])]
        out.append(dict(zip(names, unflatten(torch.from_numpy(np.asarray(arr[:])), shapes))))
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
    """Read one level of a store (the full grid by default, or 'preview'); not for writing."""
    root = open_existing(path)
    attrs: dict[str, Any] = dict(root.attrs)
    if level and level not in attrs.get("levels", []):
        raise UserError(f"store {path} has no {level!r} level")
    group = level_group(root, level)
    coords = tuple(np.asarray(cast(zarr.Array, group[d])[:]) for d in attrs["dims"])
    metrics = {m: np.asarray(cast(zarr.Array, group[m])[...]) for m in attrs["metrics"]}
    return Surface(coords, metrics, np.asarray(cast(zarr.Array, group["done"])[...]).astype(bool), attrs)


def read_array(path: str | Path, name: str) -> np.ndarray | None:
    """An extra array of a store (e.g. trajectory/coords), or None when the store has none."""
    try:
        return np.asarray(cast(zarr.Array, open_existing(path)[name])[...])
    except KeyError:
        return None

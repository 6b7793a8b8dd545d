"""A resumed store's directions read back and compared with the ones the run has just made.

The config hash and the weights' fingerprint say the run is the store's own, but not that its directions are: a
direction file or a checkpoint rewritten under the same path makes other directions under the same config, and a
resumed sweep would then mix two landscapes in one store. Each sharded rank reads back only its rows. The comparison
allows a relative l2 difference of a thousandth per tensor: a norm summed by another number of threads moves the
last bits (and a bfloat16 direction then rounds a few entries the other way), far less than that; another source
differs by the direction's own size.
Directions computed by decompositions or training (hessian, pca, curve) are not compared: their last bits, and
within a degenerate eigenspace whole vectors, may move with the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import zarr

CHECKED_KINDS = ("random", "file", "interpolation", "plane")
TOLERANCE = 1e-3  # the relative l2 difference of a tensor allowed


def first_difference(path: Path, names: list[str], shapes: list[tuple[int, ...]],
                     directions: Sequence[Sequence[torch.Tensor]],
                     ranges: Sequence[tuple[int, int] | None] | None = None) -> str | None:
    """Where the store's directions first differ from `directions` ("d<k>, tensor <name>"), or None when every tensor
    agrees to TOLERANCE (relative l2). With ranges, tensor i of each direction holds only the rows ranges[i]
    of its whole shape (a sharded rank's), None for a tensor held whole."""
    root = zarr.open_group(path, mode="r")
    for k, tensors in enumerate(directions):
        arr = cast(zarr.Array, root[f"directions/d{k}"])
        if list(cast("list[str]", arr.attrs.get("names", []))) != names:
            return f"d{k}, its tensor names"
        reader, offset = _ChunkReader(arr), 0
        for i, (name, shape, t) in enumerate(zip(names, shapes, tensors)):
            row = math.prod(shape[1:]) if shape else 1
            span = ranges[i] if ranges is not None else None
            lo, hi = span if span is not None else (0, shape[0] if shape else 1)
            stored = reader.read(offset + lo * row, offset + hi * row)
            if not _close(stored, t):
                return f"d{k}, tensor {name}"
            offset += math.prod(shape)
    return None


def _close(stored: np.ndarray, t: torch.Tensor) -> bool:
    mine = t.detach().to("cpu", torch.float64).reshape(-1)
    if mine.numel() != stored.size:
        return False
    theirs = torch.from_numpy(stored).to(torch.float64)
    return bool((mine - theirs).norm() <= TOLERANCE * theirs.norm())


class _ChunkReader:
    """Slices of a flat array read through a one-chunk cache: consecutive small tensors share a decoded chunk."""

    def __init__(self, arr: zarr.Array) -> None:
        self.arr, self.chunk = arr, arr.chunks[0]
        self.cached: tuple[int, np.ndarray] | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty(0, dtype=np.float32)
        if stop - start > self.chunk or start // self.chunk != (stop - 1) // self.chunk:
            return np.asarray(self.arr[start:stop])
        first = start // self.chunk * self.chunk
        if self.cached is None or self.cached[0] != first:
            self.cached = (first, np.asarray(self.arr[first:min(first + self.chunk, self.arr.shape[0])]))
        return self.cached[1][start - first:stop - first]


def differing_message(path: Path, where: str) -> str:
    """The one line that refuses to resume a store whose directions are not the ones this run makes."""
    return (f"store {path} holds other directions than this run makes ({where}): their source changed under the same "
            "config (direction.path's file or a checkpoint rewritten); set store.overwrite=true to replace the store, "
            "or pick another name=")

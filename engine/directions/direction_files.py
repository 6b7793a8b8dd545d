"""direction=file's source, read one tensor at a time: a .pt file (a list of {tensor name: tensor}, or one such dict),
memory-mapped where torch can, or another run's store (.zarr), each tensor sliced from its flat direction vectors.
So neither an unsharded run nor a rank of a sharded one holds the file whole beside the directions it makes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
import zarr

from engine.core.errors import UserError


class DirectionFile:
    """The directions in direction.path: how many, and each one's tensors by name, read when asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"direction.path={self.path} does not exist")
        self.stored: list[dict[str, tuple[int, tuple[int, ...]]]] = []  # per direction: name -> (offset, shape)
        self.loaded: list[Mapping[str, torch.Tensor]] = []
        if self.path.suffix == ".zarr" or self.path.is_dir():
            self._open_store()
        else:
            self._open_file()

    def _open_store(self) -> None:
        from engine.store.integrity import array_damage
        from engine.store.layout import open_existing

        self.root = open_existing(self.path)
        for k in range(len(list(cast(zarr.Group, self.root["directions"]).array_keys()))):
            damage = array_damage(self.root, self.path, f"directions/d{k}", dense=True)
            if damage:
                raise UserError(f"store {self.path}: {damage[0].file} is damaged ({damage[0].reason}); rerun the "
                                "same `landscape` command to recompute it, or set store.overwrite=true")
            attrs = cast(zarr.Array, self.root[f"directions/d{k}"]).attrs
            offset, entries = 0, {}
            for name, shape in zip(cast("list[str]", attrs["names"]), cast("list[list[int]]", attrs["shapes"])):
                entries[name] = (offset, tuple(shape))
                offset += math.prod(shape)
            self.stored.append(entries)

    def _open_file(self) -> None:
        loaded: Any = None
        for mmap in (True, False):  # a file in torch's legacy format cannot be memory-mapped
            try:
                loaded = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
                break
            except Exception as err:
                if not mmap:
                    raise UserError(f"direction file {self.path} cannot be read ({type(err).__name__})") from None
        self.loaded = [loaded] if isinstance(loaded, dict) else loaded if isinstance(loaded, list) else []

    def count(self) -> int:
        return len(self.stored) if self.stored else len(self.loaded)

    def shape(self, k: int, name: str) -> tuple[int, ...] | None:
        """Tensor `name`'s shape in direction k, or None when the direction lacks it."""
        if self.stored:
            entry = self.stored[k].get(name)
            return None if entry is None else entry[1]
        t = self.loaded[k].get(name)
        return None if not isinstance(t, torch.Tensor) else tuple(t.shape)

    def tensor(self, k: int, name: str) -> torch.Tensor:
        """Tensor `name` of direction k, read now (float32 from a store; the file's own dtype from a .pt file)."""
        if not self.stored:
            return self.loaded[k][name]
        offset, shape = self.stored[k][name]
        arr = cast(zarr.Array, self.root[f"directions/d{k}"])
        return torch.from_numpy(arr[offset:offset + math.prod(shape)]).reshape(shape)

    def check(self, names: list[str], shapes: list[tuple[int, ...]], count: int) -> None:
        """Refuse, in one line, a file with fewer than `count` directions or one made for another model."""
        if self.count() < count:
            raise UserError(f"direction file {self.path} holds {self.count()} direction(s); the grid needs {count}")
        for k in range(count):
            missing = [n for n in names if self.shape(k, n) is None]
            if missing:
                raise UserError(f"direction {k} in {self.path} lacks tensor {missing[0]} (and {len(missing) - 1} "
                                "more); it was made for another model or direction.over")
            bad = [(n, self.shape(k, n)) for n, s in zip(names, shapes) if self.shape(k, n) != tuple(s)]
            if bad:
                raise UserError(f"direction {k} in {self.path}: tensor {bad[0][0]} has shape {bad[0][1]}, the "
                                "model's differs; it was made for another model")

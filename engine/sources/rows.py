"""Weights read row block by row block: a model built with its parameters on the meta device (nothing allocated), and
readers that hand out rows [lo, hi) of one tensor of a checkpoint file or of a Hugging Face folder's safetensors
without reading the rest, so a sharded run's ranks each load only the rows they hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.errors import UserError
from engine.sources.checkpoints import state_of


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside it, every parameter a module registers is put on the meta device (buffers stay real: a rotary table or
    a BatchNorm statistic is small and may not be in the checkpoint), so a model of any size is built in no memory."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


class RowReader:
    """Rows of the tensors of one checkpoint: a torch .pt file (memory-mapped, so only the pages read are loaded), a
    .safetensors file, or a Hugging Face folder's model.safetensors (or its shards, through the index)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files: dict[Path, Any] = {}
        self._where: dict[str, Path] = {}
        self._state: dict[str, torch.Tensor] | None = None
        if self.path.is_dir():
            index = self.path / "model.safetensors.index.json"
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                self._where = {k: self.path / v for k, v in weight_map.items()}
            elif (self.path / "model.safetensors").is_file():
                self._where = {k: self.path / "model.safetensors" for k in self._keys(self.path / "model.safetensors")}
            else:
                raise UserError(f"{self.path} holds no model.safetensors: a sharded load reads safetensors; set "
                                "parallel.load=whole to load it whole")
        elif self.path.suffix == ".safetensors":
            self._where = {k: self.path for k in self._keys(self.path)}
        else:
            try:
                blob = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise UserError(f"checkpoint {self.path} cannot be memory-mapped ({type(err).__name__}: a file written "
                                "by torch.save in its default format is); set parallel.load=whole") from None
            self._state = state_of(blob, self.path)

    def _keys(self, file: Path) -> list[str]:
        return list(self._open(file).keys())

    def _open(self, file: Path) -> Any:
        if file not in self._files:
            from safetensors import safe_open

            self._files[file] = safe_open(str(file), framework="pt", device="cpu")
        return self._files[file]

    def names(self) -> set[str]:
        """The tensor names the checkpoint holds."""
        return set(self._state) if self._state is not None else set(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's whole shape, read from the file's header."""
        if self._state is not None:
            return tuple(self._state[name].shape)
        return tuple(self._open(self._where[name]).get_slice(name).get_shape())

    def rows(self, name: str, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
        """Rows [lo, hi) of a tensor along dim 0 (the whole tensor when lo is None), read alone."""
        if self._state is not None:
            whole = self._state[name]
            return whole if lo is None else whole[lo:hi]
        file = self._open(self._where[name])
        return file.get_tensor(name) if lo is None else file.get_slice(name)[lo:hi]


def check_rows_fit(reader: RowReader, shapes: dict[str, tuple[int, ...]], tied: Callable[[str], bool]) -> None:
    """One line naming the first tensors the checkpoint lacks (a tied one may be absent) or holds in another shape."""
    have = reader.names()
    missing = [n for n in shapes if n not in have and not tied(n)]
    wrong = [f"{n} {reader.shape(n)} vs model {shape}" for n, shape in shapes.items()
             if n in have and reader.shape(n) != shape]
    if missing or wrong:
        what = f"missing {', '.join(missing[:3])}" if missing else f"shape {'; '.join(wrong[:3])}"
        raise UserError(f"checkpoint {reader.path} does not fit the model: {what}; check model.* against what it was "
                        "saved with")

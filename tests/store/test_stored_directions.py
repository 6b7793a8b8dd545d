"""A resumed store's directions compared with the run's: whole, or a sharded rank's rows only; equal ones and ones
a rounding apart (a bfloat16 entry rounded the other way) pass, another source is named by direction and tensor."""

from __future__ import annotations

from pathlib import Path

import torch
import zarr

from engine.store.layout import StoreSpec, create_direction, fill_direction
from engine.store.stored_directions import first_difference

NAMES = ["a.weight", "a.bias", "b.weight"]
SHAPES = [(64, 32), (64,), (50, 30)]


def stored(path: Path, directions: list[list[torch.Tensor]], chunk: int) -> None:
    root = zarr.open_group(path, mode="w", zarr_format=3)
    spec = StoreSpec({}, {}, NAMES, SHAPES, directions, "fp", ("loss",))
    for k, tensors in enumerate(directions):
        fill_direction(create_direction(root, k, spec, chunk=chunk), tensors)


def made(seed: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(2)]


def test_whole_and_rows_agree_with_the_store_they_were_written_to(tmp_path: Path) -> None:
    dirs = made(0)
    stored(tmp_path / "s.zarr", dirs, chunk=700)  # chunks that cut across tensors
    assert first_difference(tmp_path / "s.zarr", NAMES, SHAPES, dirs) is None
    for lo, hi in ((0, 32), (32, 64), (64, 64)):  # a rank's rows of the cut tensors (none, for the last); b whole
        rows = [[a[lo:hi], bias[lo:hi], b] for a, bias, b in dirs]
        assert first_difference(tmp_path / "s.zarr", NAMES, SHAPES, rows, [(lo, hi), (lo, hi), None]) is None


def test_a_rounding_passes_and_another_source_is_named(tmp_path: Path) -> None:
    dirs = [[t.to(torch.bfloat16) for t in d] for d in made(0)]
    stored(tmp_path / "s.zarr", dirs, chunk=64)
    nudged = [[t.clone() for t in d] for d in dirs]
    flat = nudged[0][0].view(-1)
    flat[3] = (flat[3].float() * (1 + 2 ** -8)).to(torch.bfloat16)  # one entry one bfloat16 step away
    assert not torch.equal(nudged[0][0], dirs[0][0])
    assert first_difference(tmp_path / "s.zarr", NAMES, SHAPES, nudged) is None
    other = [[t.to(torch.bfloat16) for t in d] for d in made(1)]
    other[0] = dirs[0]
    assert first_difference(tmp_path / "s.zarr", NAMES, SHAPES, other) == "d1, tensor a.weight"
    rows = [[t[32:] if i < 2 else t for i, t in enumerate(d)] for d in other]
    assert first_difference(tmp_path / "s.zarr", NAMES, SHAPES, rows, [(32, 64), (32, 64), None]) == \
        "d1, tensor a.weight"

"""Directions through other checkpoints made as this rank's rows (a sharded load): the line from theta* (A) to B, and
the plane through A, B and C. Each rank reads only its rows of B and C; the plane's Gram-Schmidt runs in float64 on
the rows, every inner product summed over the shard group (a tensor every rank holds whole, a buffer, counted once).

The line's rows are an unsharded run's bit for bit. The plane's are equal to float64 rounding before they are put in
the model's dtype: its inner products are added in another order than one flat vector's (per rank and tensor, then
over the ranks), so a rare entry of a direction may round to the neighbouring float32.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from engine.core.errors import UserError
from engine.directions.kinds import Directions
from engine.directions.trajectory import COLLINEAR_TOL
from engine.directions.vectors import PerturbedTensors, to_coordinates
from engine.sources.rows import RowReader
from engine.sweep.sharded import ShardGroup


def _reader(checkpoint: str, target: PerturbedTensors, shapes: list[tuple[int, ...]]) -> RowReader:
    """The checkpoint opened for rows, refused in one line unless it holds every perturbed tensor in its shape."""
    reader = RowReader(checkpoint)
    missing = [n for n in target.names if n not in reader.names()]
    if missing:
        raise UserError(f"checkpoint {checkpoint} does not fit the model: missing {', '.join(missing[:3])}")
    for name, shape in zip(target.names, shapes):
        if reader.shape(name) != shape:
            raise UserError(f"checkpoint {checkpoint} does not fit the model: shape {name} {reader.shape(name)} vs "
                            f"model {shape}")
    return reader


def _rows(reader: RowReader, name: str, cut: bool, shape: tuple[int, ...], group: ShardGroup) -> torch.Tensor:
    return reader.rows(name, *group.row_range(shape[0])) if cut else reader.rows(name)


def line_rows(checkpoint: str, target: PerturbedTensors, cut: list[bool], shapes: list[tuple[int, ...]],
              group: ShardGroup) -> Directions:
    """The line from theta* (A, at 0) to the checkpoint B (at 1), as this rank's rows of B - A and of B."""
    reader = _reader(checkpoint, target, shapes)
    ends, direction = [], []
    for name, theta, c, shape, logged in zip(target.names, target.theta, cut, shapes, target.logged):
        rows = _rows(reader, name, c, shape, group)
        end = rows.to(theta.device, theta.dtype)
        a, b = to_coordinates([theta], [logged])[0], to_coordinates([rows.detach().clone()], [logged])[0]
        direction.append((b.detach() - a.detach()).to(theta.device, theta.dtype))
        ends.append(end)
    return Directions([direction], end=ends, markers={"A": [0.0], "B": [1.0]}, axis_labels=["A (0) to B (1)", ""])


def plane_rows(checkpoints: list[str], target: PerturbedTensors, cut: list[bool], shapes: list[tuple[int, ...]],
               group: ShardGroup) -> Directions:
    """The orthonormal plane through theta* (A), B and C (engine.directions.trajectory.plane_through), as this rank's
    rows of e1 and e2, with the three models marked at their coordinates."""
    b_reader, c_reader = (_reader(path, target, shapes) for path in checkpoints)
    u: list[torch.Tensor] = []
    w: list[torch.Tensor] = []
    for name, theta, c, shape, logged in zip(target.names, target.theta, cut, shapes, target.logged):
        a = to_coordinates([theta.detach().cpu()], [logged])[0].double()
        for reader, out in ((b_reader, u), (c_reader, w)):
            rows = _rows(reader, name, c, shape, group).detach().clone()
            out.append(to_coordinates([rows], [logged])[0].double() - a)
    counted = [c or group.leader for c in cut]  # a whole tensor is on every rank: one rank adds it

    def dot(x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
        local = torch.zeros((), dtype=torch.float64)
        for xi, yi, on in zip(x, y, counted):
            if on:
                local += (xi * yi).sum()
        dist.all_reduce(local, group=group.group)
        return float(local)

    x_b = math.sqrt(dot(u, u))
    if x_b == 0.0:
        raise UserError("checkpoints A and B are identical, so the three checkpoints are collinear; pick another B")
    e1 = [t / x_b for t in u]
    along = dot(w, e1)
    r = [wi - along * ei for wi, ei in zip(w, e1)]
    again = dot(r, e1)  # a second sweep keeps e2 orthogonal to e1 to float64 rounding
    r = [ri - again * ei for ri, ei in zip(r, e1)]
    r_norm = math.sqrt(dot(r, r))
    if r_norm <= COLLINEAR_TOL * math.sqrt(dot(w, w)):
        raise UserError("the three checkpoints are collinear (C - A is parallel to B - A, or C equals A); "
                        "pick another C")
    e2 = [t / r_norm for t in r]
    markers = {"A": [0.0, 0.0], "B": [x_b, 0.0], "C": [dot(w, e1), dot(w, e2)]}
    basis = [[t.to(theta.device, theta.dtype) for t, theta in zip(e, target.theta)] for e in (e1, e2)]
    return Directions(basis, markers=markers, axis_labels=["e1 (along B - A)", "e2"])

"""Directions through other checkpoints made as this rank's rows (a sharded load): the line from theta* (A) to B, the
plane through A, B and C, and the PCA plane of a trajectory. Each rank reads only its rows of the checkpoints; the
plane's Gram-Schmidt and the PCA's Gram matrix run in float64 on the rows, every inner product summed over the shard
group (a tensor every rank holds whole, a buffer, counted once).

The line's rows are an unsharded run's bit for bit. The planes' are equal to float64 rounding before they are put in
the model's dtype: their inner products are added in another order than one flat vector's (per rank and tensor, then
over the ranks), so a rare entry of a direction may round to the neighbouring float32.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from engine.core.errors import UserError
from engine.core.progress import progress_bar
from engine.directions.kinds import Directions
from engine.directions.trajectory import (
    COLLINEAR_TOL,
    MAX_BYTES,
    check_trajectory,
    flips,
    list_checkpoints,
    pc_labels,
    streamed_basis,
    streamed_gram,
    streamed_mean,
    top_two,
)
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


def pca_rows(folder: Path, target: PerturbedTensors, cut: list[bool], shapes: list[tuple[int, ...]],
             group: ShardGroup, progress: bool = False, max_bytes: int = MAX_BYTES) -> Directions:
    """The top two principal components of the trajectory epoch_*.pt in folder, relative to theta*
    (engine.directions.trajectory.trajectory_pca), as this rank's rows: each checkpoint's rows read, the count x count
    Gram matrix of the centred deltas summed over the group, the components' rows made from this rank's deltas.
    The deltas are held when they fit max_bytes on this rank, else streamed (about count^2 / 2 row reads)."""
    files = list_checkpoints(folder)
    check_trajectory(len(files), str(folder))
    readers = [_reader(str(f), target, shapes) for f in files]
    anchor = torch.cat([to_coordinates([theta.detach().cpu()], [logged])[0].double().reshape(-1)
                        for theta, logged in zip(target.theta, target.logged)])
    spans: list[tuple[int, int, bool, int]] = []  # each tensor's slice of this rank's flat vector, whether this rank
    start = whole = 0  # counts it, and the whole flat vector's index of the slice's first entry
    for theta, c, shape in zip(target.theta, cut, shapes):
        lo = group.row_range(shape[0])[0] if c else 0
        spans.append((start, start + theta.numel(), c or group.leader, whole + lo * math.prod(shape[1:])))
        start, whole = start + theta.numel(), whole + math.prod(shape)
    count = len(files)
    held = count * anchor.numel() * 8 <= max_bytes
    bar = progress_bar(count if held else 2 * count + count * (count + 1) // 2, "pca trajectory", "ckpt",
                       progress)

    def delta(i: int) -> torch.Tensor:
        bar.update(1)
        return torch.cat([to_coordinates([_rows(readers[i], n, c, s, group).detach().clone()], [logged])[0]
                          .double().reshape(-1) for n, c, s, logged in zip(target.names, cut, shapes, target.logged)]
                         ) - anchor

    def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # this rank's part: each entry counted on one rank
        return sum((x[..., a:b] @ y[..., a:b].mT for a, b, on, _ in spans if on),
                   torch.zeros(x.shape[:-1] + y.shape[:-1], dtype=torch.float64))

    with bar:
        if held:
            x = torch.stack([delta(i) for i in range(count)])
            mean = x.mean(0)
            x -= mean
            gram = dot(x, x)
        else:
            mean = streamed_mean(delta, count, anchor)
            gram = streamed_gram(delta, count, mean, lambda a, b: dot(a[None], b[None])[0, 0])
        dist.all_reduce(gram, group=group.group)
        weights, s, total = top_two(gram, str(folder))
        basis = (weights.T @ x if held else streamed_basis(delta, count, mean, weights)) / s.sqrt()[:, None]
    offset = dot(basis, mean[None])[:, 0]
    dist.all_reduce(offset, group=group.group)
    coords = weights * s.sqrt() + offset

    def largest_entry(k: int) -> float:  # the first entry of largest magnitude over the whole flat vector
        best = (-1.0, 0, 0.0)
        for a, b, on, first in spans:
            if on and b > a:
                j = int(basis[k, a:b].abs().argmax())
                value = float(basis[k, a + j])
                best = max(best, (abs(value), -(first + j), value))
        every: list[Any] = [None] * group.size
        dist.all_gather_object(every, best, group=group.group)
        return max(every)[2]

    for k, flip in enumerate(flips(coords, largest_entry)):
        if flip:
            coords[:, k].neg_()
            basis[k].neg_()
    explained = (float(s[0] / total), float(s[1] / total))
    directions = [[basis[k, a:b].float().reshape(theta.shape).to(theta.device, theta.dtype)
                   for (a, b, _, _), theta in zip(spans, target.theta)] for k in range(2)]
    return Directions(directions, markers={"final": [0.0, 0.0]}, axis_labels=pc_labels(explained),
                      trajectory=np.asarray(coords, dtype=np.float64), explained=list(explained))

"""A sharded run set up without any rank holding the whole model (parallel.load): the model is built with its
parameters on the meta device, sharded, and each rank reads only its rows of every weight from the checkpoint; theta*,
the directions (random or the line to a checkpoint) and the interpolation's end point are made row by row; the
weights' fingerprint and the stored directions come from whole tensors gathered one at a time inside the shard group.

Every tensor is made exactly as an unsharded run makes it (the same seeded stream, drawn tensor by tensor; each
tensor normalized whole, since a GPT-2 filter is a column across every shard), so a sharded store equals an unsharded
one bit for bit; no rank ever holds more than one whole tensor beyond its rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from engine.config.schema import RunConfig
from engine.core.errors import UserError
from engine.directions.direction_files import DirectionFile
from engine.directions.kinds import Directions
from engine.directions.vectors import (
    PerturbedTensors,
    log_space,
    normalize,
    output_rows,
    perturbed_tensors,
    seeded_normalized,
    wide,
)
from engine.sources.rows import RowReader, check_rows_fit
from engine.sweep.checkpoint_rows import line_rows, pca_rows, plane_rows
from engine.sweep.sharded import ShardGroup, shard_model


@dataclass
class Rows:
    """Which perturbed tensors are cut into rows (the sharded parameters; buffers are whole) and their whole shapes."""

    cut: list[bool]
    shapes: list[tuple[int, ...]]


def reader_of(cfg: RunConfig) -> RowReader:
    """The checkpoint the model's rows are read from: model.checkpoint, else the Hugging Face folder's weights."""
    return RowReader(cfg.model.checkpoint or str(cfg.model.path))


def load_rows(model: nn.Module, reader: RowReader, group: ShardGroup) -> int:
    """Shard the meta-built model over the group and fill each rank's rows of every parameter (and the whole buffers)
    from the checkpoint; returns the number of FSDP2 blocks."""
    state = model.state_dict(keep_vars=True)
    whole = {n: tuple(t.shape) for n, t in state.items()}
    first: dict[int, str] = {}
    for n, t in state.items():
        first.setdefault(id(t), n)
    have = reader.names()

    def tied(name: str) -> bool:  # a tied weight (GPT-2's lm_head) is saved once, under its first name
        return first[id(state[name])] != name and first[id(state[name])] in have

    check_rows_fit(reader, whole, tied)
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # to_empty below allocates them anew
    blocks = shard_model(model, group)
    model.to_empty(device=group.device)
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
        for n, t in state.items():
            if n not in have:
                continue  # tied: filled under its first name
            if isinstance(t, DTensor):
                local = t.to_local()
                lo, hi = group.row_range(t.shape[0])
                local.copy_(reader.rows(n, lo, hi))
            else:
                t.copy_(reader.rows(n))
    return blocks


def local_target(model: nn.Module, cfg: RunConfig) -> tuple[PerturbedTensors, list[bool], list[tuple[int, ...]]]:
    """The perturbed tensors as this rank's shards (DTensors' local tensors; buffers whole), which of them are cut
    into rows, and their whole shapes (what the store records)."""
    d = cfg.direction
    named = perturbed_tensors(model, d.over, d.include, d.exclude, d.frozen)
    names = [n for n, _ in named]
    cut = [isinstance(t, DTensor) for _, t in named]
    shapes = [tuple(t.shape) for _, t in named]
    tensors = [t.to_local() if isinstance(t, DTensor) else t for _, t in named]
    target = PerturbedTensors(names, tensors, log_space(model, names), [t.detach() for t in tensors],
                              output_rows(model, names))
    return target, cut, shapes


def gathered(local: list[torch.Tensor], cut: list[bool], shapes: list[tuple[int, ...]],
             group: ShardGroup) -> Iterator[torch.Tensor]:
    """The whole tensors, one at a time, from every rank's rows (an all-gather within the group per cut tensor; every
    rank of the group must iterate it in step)."""
    for t, c, shape in zip(local, cut, shapes):
        if not c:
            yield t
            continue
        per = group.rows_per_rank(shape[0])
        padded = t.new_zeros((per, *shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(group.size)]
        dist.all_gather(parts, padded.contiguous(), group=group.group)
        yield torch.cat(parts)[: shape[0]]


def row_directions(cfg: RunConfig, target: PerturbedTensors, cut: list[bool], shapes: list[tuple[int, ...]],
                   ndim: int, group: ShardGroup, progress: bool = False) -> Directions:
    """direction=random (the seeded stream drawn tensor by tensor, each normalized whole, this rank's rows kept),
    direction=file (each tensor read whole from the file, one at a time, normalized, this rank's rows kept) or
    direction=interpolation, plane or pca (the other models' rows read from their checkpoints), as this rank's rows;
    with progress, pca's bar over the checkpoints read."""
    d = cfg.direction
    if d.kind == "interpolation":
        return line_rows(d.checkpoints[0], target, cut, shapes, group)
    if d.kind == "plane":
        return plane_rows(list(d.checkpoints), target, cut, shapes, group)
    if d.kind == "pca":  # the trajectory, else the run's own checkpoints (a sharded load never trains)
        folder = Path(d.trajectory) if d.trajectory else Path(cfg.out_dir) / cfg.name / "checkpoints"
        return pca_rows(folder, target, cut, shapes, group, progress)
    out: list[list[torch.Tensor]] = [[] for _ in range(ndim)]
    if d.kind == "file":
        source = DirectionFile(cast(str, d.path))  # set: DirectionConfig checks it
        source.check(target.names, shapes, ndim)
        for k in range(ndim):
            whole = gathered(target.coordinates(), cut, shapes, group)
            for i, w in enumerate(whole):
                raw = source.tensor(k, target.names[i]).to(w.device, wide(w.dtype))
                one = normalize([raw], [w], d.norm, d.ignore, target.logged[i : i + 1],
                                None if target.rows is None else target.rows[i : i + 1])[0]
                out[k].append(_mine(one, group) if cut[i] else one)
        return Directions(out)
    g = torch.Generator().manual_seed(d.seed)
    for k in range(ndim):
        whole = gathered(target.coordinates(), cut, shapes, group)
        for i, one in enumerate(seeded_normalized(g, whole, d.norm, d.ignore, target.logged, target.rows)):
            out[k].append(_mine(one, group) if cut[i] else one)
    return Directions(out)


def _mine(whole: torch.Tensor, group: ShardGroup) -> torch.Tensor:
    lo, hi = group.row_range(whole.shape[0])
    return whole[lo:hi].clone()


def streamed_fingerprint(model: nn.Module) -> str:
    """state_fingerprint of the sharded model, bit for bit: every tensor of its state, gathered whole one at a time."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        whole = t.full_tensor() if isinstance(t, DTensor) else t
        h.update(name.encode())
        h.update(whole.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def check_shards_agree(made: Directions, group: ShardGroup) -> None:
    """Refuse to go on unless the ranks holding the same shard in every replica group hold the same directions: each
    rank hashes its rows and the hashes are compared shard by shard."""
    h = hashlib.sha256()
    for direction in made.directions:
        for t in direction:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    mine = (group.rank, h.hexdigest()[:16])
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    for shard in range(group.size):
        hashes = {v for s, v in every if s == shard}
        if len(hashes) != 1:
            raise UserError(f"the directions' rows of shard {shard} differ across replica groups ({', '.join(hashes)});"
                            " every rank must load the same checkpoint and config")

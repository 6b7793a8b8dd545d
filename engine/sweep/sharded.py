"""Sharded sweeps (parallel.shard=S): the job's W ranks form a device mesh of W/S replica groups x S shards. Each
group holds one copy of the model sharded with FSDP2 (`fully_shard` on each repeated block, then the root); every rank
moves only its own rows of each weight (the DTensors' local tensors, by the same in-place Perturber), and a grid point
is one data-parallel step: the eval batches are dealt round-robin over the group's ranks and their per-batch sums are
gathered and added in batch order, so a point's numbers are one process's, bit for bit where the forward is. One rank
per group (its leader) claims tiles from the job's counter and writes them.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from engine.core.dist import DistEnv
from engine.core.errors import UserError
from engine.core.grad_modes import reading
from engine.directions.kinds import Directions
from engine.directions.vectors import PerturbedTensors
from engine.sources.batches import EvalBatches
from engine.sources.losses import CROSS_ENTROPY, Loss, autocast, check_count, first_device
from engine.sources.structure import Batch
from engine.sweep.perturb import Perturber
from engine.sweep.vectorized import PointRunner

log = logging.getLogger("engine")
T = TypeVar("T")


@dataclass(frozen=True)
class ShardGroup:
    """This rank's place in the mesh: its shard group (S ranks holding one sharded copy) and its rank there."""

    size: int
    rank: int
    replica: int
    replicas: int
    mesh: DeviceMesh  # the group's 1D mesh ("shard")
    device: torch.device
    nodes: int = 1  # the nodes this group's ranks run on

    @property
    def leader(self) -> bool:
        """The group's rank 0: it claims and writes the group's tiles."""
        return self.rank == 0

    @property
    def group(self) -> dist.ProcessGroup:
        return self.mesh.get_group()

    def rows_per_rank(self, n: int) -> int:
        """The rows of a tensor of n rows each rank holds, the last rank's padded (torch.chunk, as FSDP2 cuts)."""
        return -(-n // self.size)

    def row_range(self, n: int) -> tuple[int, int]:
        """The rows [lo, hi) of a tensor of n rows this rank holds."""
        per = self.rows_per_rank(n)
        lo = min(n, self.rank * per)
        return lo, min(n, lo + per)

    def broadcast(self, value: T) -> T:
        """The leader's value on every rank of the group."""
        box: list[Any] = [value]
        dist.broadcast_object_list(box, group=self.group, group_src=0)
        return box[0]


def shard_group(env: DistEnv, shard: int) -> ShardGroup | None:
    """The mesh of parallel.shard=S (None for S = 1), or one line saying which rank counts it needs."""
    if shard == 1:
        return None
    if env.world_size % shard:
        raise UserError(f"parallel.shard={shard} needs a multiple of {shard} ranks and this job has {env.world_size}; "
                        f"launch {shard} (torchrun --nproc_per_node={shard}) or set parallel.shard to a divisor of "
                        f"{env.world_size}")
    hosts: list[Any] = [None] * env.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    spans = group_nodes(hosts, shard)  # refused before the mesh is made when a group straddles nodes needlessly
    mesh = init_device_mesh(env.device.type, (env.world_size // shard, shard), mesh_dim_names=("replica", "shard"))
    replica = mesh.get_local_rank("replica")
    return ShardGroup(shard, mesh.get_local_rank("shard"), replica, env.world_size // shard, mesh["shard"],
                      env.device, spans[replica])


def group_nodes(hosts: list[str], shard: int) -> list[int]:
    """The number of nodes each shard group spans (group g holds ranks g*S .. g*S+S-1, the mesh's rows), given each
    rank's host; one line refusing a group that is neither inside one node nor made of whole nodes (every forward
    all-gathers the weights within the group, so its traffic must stay on one node's links or own its nodes)."""
    ranks_on = Counter(hosts)
    spans = []
    for g in range(len(hosts) // shard):
        mine = Counter(hosts[g * shard:(g + 1) * shard])
        if len(mine) > 1 and any(ranks_on[h] != n for h, n in mine.items()):
            per_node = min(ranks_on.values())
            raise UserError(f"parallel.shard={shard}: shard group {g} (ranks {g * shard}-{(g + 1) * shard - 1}) "
                            f"spans {len(mine)} nodes and shares them with other groups ({per_node} rank(s) per "
                            f"node); launch a multiple of {shard} ranks per node (torchrun --nproc_per_node, SLURM "
                            f"--ntasks-per-node) or set parallel.shard to a divisor or multiple of {per_node}")
        spans.append(len(mine))
    return spans


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's repeated blocks, outermost first: the children of a ModuleList or Sequential that holds two or
    more modules of one class with parameters (transformer layers, residual blocks)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList | nn.Sequential):
            continue
        if any(name == b or name.startswith(b + ".") for b, _ in found):
            continue  # inside a block already chosen
        kids = [(f"{name}.{k}" if name else k, c) for k, c in module.named_children()]
        if len(kids) >= 2 and len({type(c) for _, c in kids}) == 1 and all(
                next(c.parameters(), None) is not None for _, c in kids):
            found += kids
    return found


def shard_model(model: nn.Module, group: ShardGroup) -> int:
    """Shard the model over the group in place: each repeated block is one FSDP2 unit, the rest the root's; returns
    the number of blocks."""
    blocks = repeated_blocks(model)
    for _, block in blocks:
        fully_shard(block, mesh=group.mesh, reshard_after_forward=True)
    # the root too: FSDP2 keeps a root's gathered weights after its forward by default, and the next point's forward
    # would then run on them instead of gathering the moved shards
    fully_shard(model, mesh=group.mesh, reshard_after_forward=True)
    return len(blocks)


def local_rows(full: torch.Tensor, group: ShardGroup) -> torch.Tensor:
    """This rank's rows (dim 0) of a whole tensor as FSDP2 shards it (torch.chunk over the group), as a copy."""
    return full[slice(*group.row_range(full.shape[0]))].clone()


def localize(model: nn.Module, target: PerturbedTensors, made: Directions,
             group: ShardGroup) -> tuple[PerturbedTensors, Directions]:
    """The perturbed tensors as this rank's shards of the sharded model, and the directions (and an interpolation's
    end point) cut to the same rows; the whole ones are let go of. Buffers (BatchNorm statistics) are not sharded:
    every rank moves them whole."""
    live: dict[str, torch.Tensor] = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    tensors: list[torch.Tensor] = []
    cut: list[bool] = []
    for name, old in zip(target.names, target.tensors):
        now = live.get(name, old)  # the module's tensor after sharding (FSDP2 may have moved a buffer)
        cut.append(isinstance(now, DTensor))
        tensors.append(now.to_local() if isinstance(now, DTensor) else now)

    def mine(whole: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, (t, c) in enumerate(zip(whole, cut)):
            part = local_rows(t, group) if c else t
            if part.shape != tensors[i].shape:
                raise RuntimeError(f"{target.names[i]}: rows {tuple(part.shape)} of the direction do not match the "
                                   f"shard {tuple(tensors[i].shape)}")
            out.append(part)
        return out

    directions = [mine(d) for d in made.directions]
    end = mine(made.end) if made.end is not None else None
    local = PerturbedTensors(target.names, tensors, target.logged, [t.detach() for t in tensors], target.rows)
    return local, dataclasses.replace(made, directions=directions, end=end)


def group_evaluate(model: nn.Module, batches: EvalBatches, group: ShardGroup, precision: str,
                   loss: Loss) -> dict[str, float]:
    """The loss's mean metrics over all batches as one data-parallel step of the group: batch i is run by the group's
    rank i mod S; every rank runs as many forwards (the shards' all-gathers are collective), and the per-batch sums
    are added in batch order, in their own dtypes, as engine.sources.losses.evaluate adds them."""
    sums: list[dict[str, torch.Tensor]] = []
    first: Batch | None = None
    n = 0
    with reading(model):
        for i, batch in enumerate(batches):
            first = batch if first is None else first
            n += 1
            if i % group.size == group.rank:
                sums.append(_sums(model, batch, precision, loss))
        if first is None:
            raise UserError("the eval split is empty; check eval.samples and data")
        rounds = -(-n // group.size)
        template = sums[0] if sums else _sums(model, first, precision, loss)
        for _ in range(rounds - len(sums) - (0 if sums else 1)):
            _sums(model, first, precision, loss)  # a forward whose numbers are not used: the group's count of calls
    keys = list(template)
    packed = torch.full((rounds, len(keys)), float("nan"), dtype=torch.float64, device=group.device)
    for r, s in enumerate(sums):
        packed[r] = torch.stack([s[k].to(group.device, torch.float64) for k in keys])
    gathered = [torch.empty_like(packed) for _ in range(group.size)]
    dist.all_gather(gathered, packed, group=group.group)
    total: dict[str, torch.Tensor] = {}
    for i in range(n):
        row = gathered[i % group.size][i // group.size]
        for j, key in enumerate(keys):
            value = row[j].to(template[key].dtype)  # float64 holds every int64 count and float32 sum exactly
            total[key] = value if key not in total else total[key] + value
    summed = {key: value.item() for key, value in total.items()}
    check_count(summed["count"], loss.name)
    return {k: float(v) for k, v in loss.means(summed).items()}


def _sums(model: nn.Module, batch: Batch, precision: str, loss: Loss) -> dict[str, torch.Tensor]:
    with autocast(first_device(batch), precision):
        out = loss.forward(model, batch)
    return loss.sums(out, batch)


class ShardedRunner(PointRunner):
    """Points one at a time (K = 1) on the sharded model: the group's ranks move their shards in place, then
    evaluate the point together (group_evaluate)."""

    def __init__(self, model: nn.Module, perturber: Perturber, batches: EvalBatches, group: ShardGroup,
                 precision: str = "fp32", loss: Loss = CROSS_ENTROPY) -> None:
        super().__init__(model, perturber, batches, precision, None, 1, None, loss=loss)
        self.group = group

    def _metrics(self, coords: np.ndarray) -> dict[str, np.ndarray]:
        out = {m: np.empty(len(coords)) for m in self.loss.metrics}
        for i, c in enumerate(coords):
            self.perturber.set(tuple(float(v) for v in c))
            for metric, value in group_evaluate(self.model, self.batches, self.group, self.precision,
                                                self.loss).items():
                out[metric][i] = value
        return out


def sharded_runner(model: nn.Module, target: PerturbedTensors, made: Directions, batches: EvalBatches,
                   group: ShardGroup, precision: str, loss: Loss) -> ShardedRunner:
    """The runner of a sharded sweep, its Perturber on this rank's shards (target and made from localize)."""
    perturber = Perturber(target.tensors, made.directions, made.end, logged=target.logged)
    log.info("sharded over %d ranks (replica group %d of %d, shard %d): %d perturbed elements on this rank, of a "
             "model of %d parameters",
             group.size, group.replica, group.replicas, group.rank, sum(t.numel() for t in target.tensors),
             sum(p.numel() for p in model.parameters()))
    runner = ShardedRunner(model, perturber, batches, group, precision, loss)
    runner.coefficients = made.coefficients
    return runner


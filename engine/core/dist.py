"""torch.distributed in one place: start (NCCL on CUDA, gloo on CPU, or one plain process), agree, stop.

`process_group` joins and leaves the group around a whole run; values every rank must share (directions, weights)
are checked by hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from engine.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Who this process is in the job and which device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Join the process group described by RANK / WORLD_SIZE / LOCAL_RANK (torchrun, submitit), if any.

    One GPU per rank with NCCL where CUDA is used, gloo on CPU; without those variables, one plain process.
    Safe to call twice.
    """
    _export_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError(f"eval.device={device} but no CUDA device is visible; use eval.device=cpu or auto")
    if use_cuda:
        index = local if device in ("auto", "cuda") else torch.device(device).index or 0
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world, local, dev)


def _export_slurm_env() -> None:
    """Inside a SLURM (or submitit local) job of several tasks, set RANK, WORLD_SIZE, MASTER_ADDR... for env://.

    torchrun sets these itself; a job whose tasks are the ranks (submitit, Hydra's submitit launcher,
    srun without torchrun) gets them from submitit's reading of the job environment.
    """
    if "RANK" in os.environ:
        return
    tasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SUBMITIT_LOCAL_NTASKS") or "1"
    if ("SLURM_JOB_ID" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ) and int(tasks) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@contextmanager
def process_group(device: str = "auto") -> Iterator[DistEnv]:
    """Join the job's process group for the duration of a run and leave it afterwards; a group the caller had
    already joined (a user's own torchrun script) is left joined."""
    joined_here = not dist.is_initialized()
    env = init_distributed(device)
    try:
        yield env
    finally:
        if joined_here:
            destroy_distributed()


def destroy_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def on_main(env: DistEnv, fn: Callable[[], T]) -> T | None:
    """Run fn on rank 0 only; a UserError there is raised on every rank (so no rank waits forever)."""
    error: list[Any] = [None]
    result = None
    if env.is_main:
        try:
            result = fn()
        except UserError as err:
            error[0] = str(err)
    if env.distributed:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise UserError(error[0])
    return result


def broadcast_value(env: DistEnv, value: T | None) -> T:
    """Rank 0's value on every rank."""
    box: list[Any] = [value]
    if env.distributed:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same(env: DistEnv, what: str, value: str) -> None:
    """Refuse to go on unless every rank holds the same value (a hash of directions or weights)."""
    if not env.distributed:
        return
    values: list[Any] = [None] * env.world_size
    dist.all_gather_object(values, value)
    if len(set(values)) != 1:
        raise UserError(f"{what} differ across ranks ({', '.join(map(str, values))}); every rank must load "
                        "the same checkpoint and config")


def tensors_hash(tensors: list[torch.Tensor]) -> str:
    """A short hash of a list of tensors' bytes (to prove ranks agree)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

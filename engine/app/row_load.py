"""The stages of a sharded run whose ranks read only their own rows of the weights (parallel.load): whether it can,
the model built on the meta device and filled row by row, theta* and the directions as rows, the ranks' agreement,
and the store's directions written from whole tensors gathered one at a time. No rank holds the whole model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from engine.config.cross import whole_load_reason
from engine.config.schema import RunConfig
from engine.core.dist import DistEnv, check_same
from engine.core.errors import UserError
from engine.directions.kinds import Directions
from engine.directions.kinds import in_dtype as directions_in_dtype
from engine.directions.vectors import PerturbedTensors
from engine.sources.models import build_model
from engine.sources.splits import DataBundle
from engine.store.layout import StoreSpec, write_deferred
from engine.store.stored_directions import differing_message, first_difference

if TYPE_CHECKING:  # FSDP2's modules load only for sharded runs
    from engine.sweep.sharded import ShardGroup
    from engine.sweep.sharded_setup import Rows

log = logging.getLogger("engine")


def reads_rows(cfg: RunConfig, group: ShardGroup | None, from_config: bool) -> tuple[bool, str | None]:
    """Whether this run's ranks read only their rows of the checkpoint (a sharded run whose model comes from the
    config, not handed over from Python, with parallel.load=sharded, or auto when nothing asked for needs the whole
    model), and the line that says so for the rank logs (None for an unsharded run)."""
    if group is None:
        return False, None
    if not from_config or cfg.parallel.load == "whole":
        why = "parallel.load=whole" if from_config else "the model was handed over whole"
        return False, f"every rank loaded the whole model before sharding it ({why})"
    reason = whole_load_reason(cfg)
    if reason is not None:
        return False, f"parallel.load=auto: every rank loaded the whole model before sharding it ({reason})"
    source = cfg.model.checkpoint or cfg.model.path
    return True, f"this rank read its rows of {source} (parallel.load={cfg.parallel.load})"


def row_model(cfg: RunConfig, data: DataBundle, env: DistEnv, group: ShardGroup) -> nn.Module:
    """The configured model built with its parameters on the meta device, in model.dtype, sharded over the group,
    each rank holding only its rows of every weight as read from model.checkpoint or the Hugging Face folder."""
    from engine.app.stages import in_dtype
    from engine.sources.rows import parameters_on_meta
    from engine.sweep.sharded_setup import load_rows, reader_of

    torch.manual_seed(cfg.train.seed)
    with parameters_on_meta():
        if cfg.model.name == "hf":
            from engine.sources.hf import build_hf_model, check_text_fits

            model = build_hf_model(cfg.model, weights=False)
            if "vocab_size" in data.extra:
                check_text_fits(model, data.extra["vocab_size"], cfg.data.block_size, data.extra.get("pad_token_id"))
        else:
            model = build_model(cfg.model, data.input_shape, data.num_classes)
    model = in_dtype(model, getattr(torch, cfg.model.dtype))  # on the meta device: nothing is converted yet
    blocks = load_rows(model, reader_of(cfg), group)
    log.info("model sharded over %d ranks as it was built: %d block(s) and the root", group.size, blocks)
    return model.eval()


def row_target(model: nn.Module, cfg: RunConfig) -> tuple[PerturbedTensors, Rows]:
    """The perturbed tensors as this rank's rows, and which are cut with their whole shapes."""
    from engine.sweep.sharded_setup import Rows, local_target

    target, cut, shapes = local_target(model, cfg)
    return target, Rows(cut, shapes)


def row_directions(cfg: RunConfig, model: nn.Module, target: PerturbedTensors, rows: Rows, ndim: int,
                   group: ShardGroup, env: DistEnv) -> tuple[Directions, str]:
    """The directions as this rank's rows (in direction.dtype) and the weights' fingerprint, once every rank agrees:
    the fingerprint from whole tensors gathered one at a time, the directions compared shard by shard."""
    from engine.sweep.sharded_setup import check_shards_agree, row_directions, streamed_fingerprint

    made = row_directions(cfg, target, rows.cut, rows.shapes, ndim, group, cfg.eval.progress and env.is_main)
    made = directions_in_dtype(made, getattr(torch, cfg.direction.dtype))
    fingerprint = streamed_fingerprint(model)
    check_same(env, "model weights (fingerprints)", fingerprint)
    check_shards_agree(made, group)
    return made, fingerprint


def deferred_writer(made: Directions, rows: Rows, group: ShardGroup) -> Callable[[Path, StoreSpec, list[int]], None]:
    """What writes the store's deferred directions: the first replica group gathers each tensor whole, one at a time
    (every rank of it gets the whole tensor), and its S ranks write the direction's chunks in parallel, rank r the
    chunks i with i % S == r; the other groups hold the same rows and wait."""
    from engine.sweep.sharded_setup import gathered

    def write(path: Path, spec: StoreSpec, todo: list[int]) -> None:
        if group.replica != 0:
            return
        for k in todo:
            if group.leader:
                write_deferred(path, k, spec, [], create=True)  # the empty array, before any rank writes into it
            dist.barrier(group=group.group)
            write_deferred(path, k, spec, gathered(made.directions[k], rows.cut, rows.shapes, group),
                           part=group.rank, parts=group.size, create=False)
    return write


def deferred_check(made: Directions, names: list[str], rows: Rows, group: ShardGroup) -> Callable[[Path], None]:
    """What checks a resumed store's directions against the run's: each rank of the first replica group reads back
    only its rows and compares them; any rank's difference refuses the run on every rank, in one line."""

    def check(path: Path) -> None:
        found = None
        if group.replica == 0:
            ranges = [group.row_range(shape[0]) if cut else None for cut, shape in zip(rows.cut, rows.shapes)]
            found = first_difference(path, names, rows.shapes, made.directions, ranges)
        every: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(every, found)
        first = next((f for f in every if f is not None), None)
        if first is not None:
            raise UserError(differing_message(path, first))
    return check

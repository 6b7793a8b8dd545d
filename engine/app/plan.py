"""`landscape-plan`: what a sweep needs before it is queued. For each parallel.shard S that divides the ranks to
plan for, the memory per rank from the formula: the larger of the sweep's (model + theta* + directions) / S + one
batch's activations and, when a sharpness number is asked for, the ascents' 4 copies of the model / S + one gradient
batch's graph; the tiles per replica group, and the wall time of the grid from points timed on this device; the
formula is checked against the peak this process measures while it times. A Hugging Face folder holding only
config.json (a 7B or 70B model's, without its weights) is planned from the formula alone, its parameters counted on
the meta device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from engine.config.cross import whole_load_reason
from engine.config.schema import RunConfig
from engine.core.dist import DistEnv
from engine.core.memory import StageMemory
from engine.sources.losses import Loss
from engine.sources.splits import AnySplit
from engine.store.grid import make_levels, shape_only

GB = 1e9


@dataclass
class Measured:
    """What timing a few points of the real model on this device gave."""

    seconds_per_point: float
    peak_bytes: int  # the process's peak beyond its start, loading included
    activation_bytes: int  # one eval batch's module outputs (an upper bound on its activations)
    batch_size: int
    graph_bytes: int  # the saved tensors of one gradient batch of the sharpness ascents (0: no sharpness asked)


def per_rank_bytes(params: int, model_bytes: int, direction_bytes: int, count: int, shard: int,
                   activations: int = 0, theta_copy: bool = True) -> float:
    """Bytes a rank holds while it sweeps: its 1/S of the model, of theta* (a copy in the model's dtype, unless the
    weights are made on access) and of the `count` directions, plus one batch's activations (not sharded: each rank
    runs whole batches)."""
    return params * ((1 + theta_copy) * model_bytes + count * direction_bytes) / shard + activations


def sharpness_bytes(params: int, model_bytes: int, shard: int, graph: int = 0) -> float:
    """Bytes a rank holds in the sharpness ascents: its 1/S of the model, of theta*, of the step (deltas or u) and of
    the gradient, all in the model's dtype, plus one gradient batch's autograd graph."""
    return 4 * params * model_bytes / shard + graph


def clock(seconds: float) -> str:
    """h:mm:ss (hours past 24 kept), what SLURM's --time takes."""
    whole = math.ceil(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def divisors(n: int) -> list[int]:
    return [s for s in range(1, n + 1) if n % s == 0]


def device_memory(device: torch.device, ranks: int) -> float:
    """Bytes one rank may hold here: its GPU's memory, or the host's memory shared by the ranks on a CPU."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return kb * 1024 / max(ranks, 1)


def count_parameters(cfg: RunConfig) -> tuple[int, bool]:
    """(the model's parameter count, whether its weights are there to time it)."""
    if cfg.model.name == "hf":
        from engine.sources.hf import hf_parameter_count

        return hf_parameter_count(cfg.model)
    from engine.sources.data import load_data
    from engine.sources.models import build_model

    data = load_data(cfg.data, cfg.model.path)
    return sum(p.numel() for p in build_model(cfg.model, data.input_shape, data.num_classes).parameters()), True


def measure(cfg: RunConfig, points: int) -> Measured:
    """Load the model and data as a run does, make the directions, and time `points` grid points in place (K = 1)."""
    from engine.app import stages
    from engine.directions.kinds import coefficients_at
    from engine.directions.vectors import perturbed
    from engine.sources.batches import eval_batches
    from engine.sources.checkpoints import load_checkpoint
    from engine.sources.data import load_data
    from engine.sources.losses import evaluate
    from engine.sources.models import build_model
    from engine.sweep.runner import make_perturber
    from engine.sweep.vectorized import activation_bytes

    device = torch.device("cuda" if cfg.eval.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.eval.device == "auto" else cfg.eval.device)
    env = DistEnv(0, 1, 0, device)
    memory = StageMemory(device)
    with memory.stage("load"):
        data = load_data(cfg.data, cfg.model.path)
        model = build_model(cfg.model, data.input_shape, data.num_classes)  # not trained: timing needs no minimum
        if cfg.model.checkpoint:
            load_checkpoint(model, cfg.model.checkpoint)
        model = stages.in_dtype(model.to(device), getattr(torch, cfg.model.dtype)).eval()
        split = stages.eval_split(cfg, data)
        loss = stages.loss_stage(cfg, model, split, env)
        d = cfg.direction
        target = perturbed(model, d.over, d.include, d.exclude, d.frozen)
    plan = make_levels(shape_only(cfg.grid), cfg.direction.count)[""]
    with memory.stage("directions"):
        made = stages.directions_stage(cfg, model, target, plan, [], env, loss)
    batch_size = cfg.eval.batch_size or stages.SHARDED_BATCH
    with memory.stage("sweep"):
        batches = eval_batches(split, batch_size, device, cfg.eval.cache, cfg.eval.memory_gb, cfg.eval.workers)
        perturber = make_perturber(cfg, model, target.tensors, made.directions, made.end, logged=target.logged)
        grid = np.stack(np.meshgrid(*plan.coords, indexing="ij"), -1).reshape(-1, plan.ndim)
        chosen = coefficients_at(made.coefficients, grid[np.linspace(0, len(grid) - 1, points + 1).round().astype(int)],
                                 len(made.directions))
        with perturber.active():
            perturber.set(tuple(chosen[0]))
            evaluate(model, batches, cfg.eval.precision, loss)  # warm-up
            start = time.perf_counter()
            for coords in chosen[1:]:
                perturber.set(tuple(float(c) for c in coords))
                evaluate(model, batches, cfg.eval.precision, loss)
            seconds = (time.perf_counter() - start) / points
        first = batches[0] if isinstance(batches, list) else next(iter(batches))
        acts = activation_bytes(model, first, loss)
    return Measured(seconds, memory.highest, acts, batch_size, ascent_graph(cfg, model, split, loss, device))


def ascent_graph(cfg: RunConfig, model: torch.nn.Module, split: AnySplit, loss: Loss, device: torch.device) -> int:
    """Bytes of one gradient batch's graph, at the batch size the sharpness stage would choose (0: no sharpness)."""
    from engine.app.landscape import sharpness_on
    from engine.app.stages import sharpness_batch_size
    from engine.curvature.batched import graph_bytes
    from engine.sources.splits import held, subsample
    from engine.sources.structure import to_device

    if not sharpness_on(cfg):
        return 0
    samples = held(subsample(split, cfg.summary.sharpness_samples, cfg.data.seed))
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    size = sharpness_batch_size(model, samples, params, cfg, DistEnv(0, 1, 0, device), loss)
    return graph_bytes(model, to_device(samples.batch(0, size), device), loss)


def plan_lines(cfg: RunConfig, ranks: int, points: int = 3, memory_gb: float | None = None) -> list[str]:
    """The plan as printed lines (see the module docstring); memory_gb: one rank's device memory (default: here's)."""
    params, has_weights = count_parameters(cfg)
    model_bytes = torch.empty(0, dtype=getattr(torch, cfg.model.dtype)).element_size()
    direction_bytes = torch.empty(0, dtype=getattr(torch, cfg.direction.dtype)).element_size()
    levels = make_levels(shape_only(cfg.grid), cfg.direction.count)
    count = cfg.direction.count if cfg.direction.count > 1 else levels[""].ndim
    tiles = sum(math.prod(p.tile_grid) for p in levels.values())
    tile_points = math.prod(levels[""].tile)
    total = sum(math.prod(p.shape) for p in levels.values())
    lines = [f"{cfg.model.name}: {params / 1e6:.1f}M parameters in {cfg.model.dtype}, {count} direction(s) in "
             f"{cfg.direction.dtype}; grid {'x'.join(map(str, levels[''].shape))}: {total} points in {tiles} tile(s) "
             f"(preview included)"]
    measured = measure(cfg, points) if has_weights else None
    copy = cfg.eval.perturb == "in_place"  # on_access (S = 1 only): the weights are theta*, no copy of it
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.eval.device != "cpu" else "cpu")
    acts = measured.activation_bytes if measured else 0
    if measured is None:
        lines.append("no weights in model.path: memory from the formula alone (activations not counted), no timing")
    else:
        formula = per_rank_bytes(params, model_bytes, direction_bytes, count, 1, acts, copy)
        lines.append(f"measured on this {device.type} (1 process, batch {measured.batch_size}): "
                     f"{measured.seconds_per_point:.3g} s per point; peak {measured.peak_bytes / GB:.2f} GB beyond the "
                     f"process start; the formula at S=1 gives {formula / GB:.2f} GB (model{' and theta*' * copy} "
                     f"{(1 + copy) * params * model_bytes / GB:.2f}, "
                     f"directions {count * params * direction_bytes / GB:.2f}, "
                     f"activations {acts / GB:.2f}): measured/formula {measured.peak_bytes / formula:.2f}")
    room = memory_gb * GB if memory_gb is not None else device_memory(device, ranks)
    lines.append(f"on {ranks} rank(s), {room / GB:.1f} GB per rank "
                 f"({'given' if memory_gb is not None else device.type}):")
    lines.append(f"{'shard':>6}{'groups':>8}{'GB per rank':>13}{'fits':>6}{'tiles/group':>13}{'wall (ideal)':>14}")
    from engine.app.landscape import sharpness_on

    ascents = sharpness_on(cfg)
    graph = measured.graph_bytes if measured else 0
    for shard in divisors(ranks):
        need = per_rank_bytes(params, model_bytes, direction_bytes, count, shard, acts, copy or shard > 1)
        if ascents:
            need = max(need, sharpness_bytes(params, model_bytes, shard, graph))
        groups = ranks // shard
        per_group = -(-tiles // groups)
        wall = "-" if measured is None else clock(per_group * tile_points * measured.seconds_per_point / shard)
        lines.append(f"{shard:>6}{groups:>8}{need / GB:>13.3g}{'yes' if need <= room else 'no':>6}"
                     f"{per_group:>13}{wall:>14}")
    whole = params * (model_bytes + count * direction_bytes)
    if not copy:
        lines.append("eval.perturb=on_access holds no copy of theta* at S=1; S > 1 moves its rows in place and "
                     "does (set eval.perturb=in_place there)")
    if ascents:
        lines.append(f"GB per rank: the larger of the sweep and the sharpness ascents (summary.epsilon, "
                     f"summary.adaptive_radius), which hold 4 copies of the rank's share of the model "
                     f"({4 * params * model_bytes / GB:.3g} GB at S=1) and one gradient batch's graph "
                     f"({graph / GB:.2f} GB{', measured' if measured else ', not counted'})")
    lines.append("wall (ideal): tiles per group x points per tile x the time per point here / S, at perfect scaling")
    reason = whole_load_reason(cfg) if cfg.parallel.load != "whole" else "parallel.load=whole"
    if reason is None:
        lines.append("S > 1: each rank reads only its rows of the weights (parallel.load=auto), so loading holds the "
                     "same share plus one whole tensor at a time")
    else:
        lines.append(f"S > 1 loads the whole model on every rank first ({reason}): {whole / GB:.3g} GB per rank at "
                     f"any S ({'fits' if whole <= room else 'does not fit'})")
    return lines

"""The grid stage: the levels to sweep, with grid.x=auto / grid.y=auto resolved before the store is made.

Every rank bisects along each axis's directions (engine/sweep/autorange.py) on the eval set, in place (a sharded
forward is collective), and every rank takes rank 0's ranges; they go to the console and into the store (attribute
auto_range, and summary.json). A run resumed on its store reuses the ranges stored there (no bisection), so the
resumed grid is the one it started.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
from torch import nn

from engine.app import stages
from engine.config.schema import AUTO, RunConfig, config_hash
from engine.core.dist import DistEnv, broadcast_value, on_main
from engine.directions.kinds import Directions
from engine.directions.vectors import PerturbedTensors
from engine.sources.batches import eval_batches
from engine.sources.losses import Loss, evaluate
from engine.sources.splits import AnySplit
from engine.store.grid import GridPlan, make_levels
from engine.store.layout import store_attrs
from engine.sweep.autorange import axis_range, target_loss
from engine.sweep.runner import make_perturber

AUTO_RANGE = "auto_range"  # the store's attribute holding the chosen ranges and how they were found


@dataclasses.dataclass(frozen=True)
class Swept:
    """What the grid stage hands the store stage: the model, its perturbed tensors and directions, the eval set."""

    model: nn.Module
    target: PerturbedTensors
    made: Directions
    split: AnySplit
    loss: Loss


def auto_axes(cfg: RunConfig) -> list[str]:
    """The grid's axes whose range is auto."""
    return [a for a in "xy"[: len(cfg.grid.resolution)] if getattr(cfg.grid, a) == AUTO]


def axis_directions(cfg: RunConfig, count: int) -> dict[str, list[int]]:
    """Which directions each grid axis moves along: all N for N lines' x, else d1 for x and d2 for y."""
    if cfg.direction.count > 1:
        return {"x": list(range(count))}
    return {a: [k] for k, a in enumerate("xy"[: len(cfg.grid.resolution)])}


def grid_stage(cfg: RunConfig, resolved: dict[str, Any], swept: Swept, env: DistEnv, fingerprint: str,
               say: stages.Say) -> tuple[dict[str, GridPlan], dict[str, Any] | None]:
    """The levels to sweep and, with an auto axis, the record of how its range was chosen (None otherwise)."""
    auto = auto_axes(cfg)
    if not auto:
        return make_levels(cfg.grid, cfg.direction.count), None

    stored = broadcast_value(env, on_main(env, lambda: stored_ranges(cfg, resolved, fingerprint)))
    # every rank bisects (a sharded model's forward is collective: the ranks of a group must step together); the
    # losses and so the steps are the same on each, and rank 0's ranges are the ones every rank takes
    record = broadcast_value(env, stored or bisect_ranges(cfg, swept, env, auto))
    ranges: dict[str, Any] = {a: list(record[a]["range"]) for a in auto}
    grid = dataclasses.replace(cfg.grid, **ranges)
    line = "; ".join(f"grid.{a}=auto: [{record[a]['range'][0]:g}, {record[a]['range'][1]:g}]" for a in auto)
    say(f"{line} (the loss reaches {record['target']:.4g}, from {record['centre_loss']:.4g} at theta*, at the edges"
        f"{'; as stored' if record.get('reused') else ''})")
    logging.getLogger("engine").info("%s, target loss %.6g", line, record["target"])
    record.pop("reused", None)
    return make_levels(grid, cfg.direction.count), record


def stored_ranges(cfg: RunConfig, resolved: dict[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The ranges of the store this run resumes (same config and weights), so a resumed grid is the first one."""
    attrs = None if cfg.store.overwrite else store_attrs(stages.store_path_of(cfg))
    if not attrs or attrs.get("creating") or AUTO_RANGE not in attrs:
        return None
    if attrs.get("config_hash") != config_hash(resolved) or attrs.get("fingerprint") != fingerprint:
        return None  # the store stage refuses it, naming what differs
    return {**attrs[AUTO_RANGE], "reused": True}


def bisect_ranges(cfg: RunConfig, swept: Swept, env: DistEnv, auto: list[str]) -> dict[str, Any]:
    """Bisect every auto axis on the eval set (eval.batch_size, else the unset default), in place from theta*."""
    e = cfg.eval
    batch_size = e.batch_size or (stages.SHARDED_BATCH if cfg.parallel.shard > 1 else stages.DEFAULT_BATCH)
    batches = eval_batches(swept.split, batch_size, env.device, e.cache, e.memory_gb, e.workers)
    made, target = swept.made, swept.target
    count = len(made.directions)
    perturber = make_perturber(cfg, swept.model, target.tensors, made.directions, made.end, logged=target.logged)

    def loss_at(coefficients: np.ndarray) -> float:
        perturber.set(tuple(float(c) for c in coefficients))
        return evaluate(swept.model, batches, e.precision, swept.loss)["loss"]

    directions = axis_directions(cfg, count)
    with perturber.active():
        centre = loss_at(np.zeros(count))
        target_value = target_loss(centre, cfg.grid.auto_rise, cfg.summary.basin_rise)
        ranges = {a: axis_range(a, directions[a], count, loss_at, target_value).record() for a in auto}
    return {"centre_loss": centre, "target": target_value, "auto_rise": cfg.grid.auto_rise,
            "basin_rise": cfg.summary.basin_rise, "batch_size": batch_size, **ranges}


def layout_attrs(cfg: RunConfig, record: dict[str, Any] | None) -> dict[str, Any]:
    """The store's root attributes of the grid stage: the N-line layout and seeds, the auto ranges."""
    attrs: dict[str, Any] = {}
    if cfg.direction.count > 1:
        from engine.directions.lines import line_seeds

        attrs.update({"layout": "lines", "line_seeds": line_seeds(cfg.direction)})
    if record is not None:
        attrs[AUTO_RANGE] = record
    return attrs

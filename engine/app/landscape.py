"""A whole run as its stages in order: data, model (trained or loaded), directions, store, sweep, spectrum,
sharpness, summary, figures.

Works the same in one process and on N ranks (torchrun, SLURM): rank 0 trains and creates the store, every
rank checks it holds the same weights and directions, all ranks sweep, rank 0 assembles and draws. The process
group is joined and left here, around the whole run.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from engine.app import autogrid, stages
from engine.app.provenance import ranks_and_devices, write_provenance
from engine.app.row_load import deferred_check, deferred_writer, reads_rows, row_directions, row_model, row_target
from engine.config.cross import check_combination
from engine.config.schema import RunConfig
from engine.core.dist import DistEnv, on_main, process_group
from engine.core.hostalloc import few_arenas, imports_frozen, release_freed_memory
from engine.core.memory import StageMemory
from engine.curvature.spectra import Batches as HessianBatches
from engine.directions.vectors import PerturbedTensors, perturbed
from engine.sources.data import load_data
from engine.sources.losses import Loss
from engine.sources.splits import AnySplit
from engine.store.grid import make_levels, shape_only
from engine.store.tiles import Work

if TYPE_CHECKING:  # FSDP2's modules load only for sharded runs
    from engine.sweep.sharded_setup import Rows


@dataclass
class RunResult:
    """Where a run put its outputs (summary and figures on rank 0 only) and the tiles this rank computed."""

    run_dir: Path
    store: Path
    tiles_computed: list[Work]
    summary: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def run_train(cfg: RunConfig) -> Path:
    """The train stage alone: per-epoch checkpoints and final.pt under <run dir>/checkpoints."""
    check_combination(cfg)
    with process_group(cfg.eval.device) as env:
        stages.prepare_model(cfg, load_data(cfg.data, cfg.model.path), env)
    return stages.run_dir_of(cfg) / "checkpoints" / "final.pt"


def run_landscape(cfg: RunConfig, resolved: dict[str, Any], log: bool = True,
                  given: stages.Given | None = None) -> RunResult:
    """Train or load, sweep the grid into the store (resuming), summarize and draw; returns the outputs. With
    `given` (the Python API), its model, eval set and loss replace the config's model, data and loss."""
    start, started = time.perf_counter(), time.time()
    stages.preflight(cfg)
    if cfg.track is not None:
        from engine.app.trackers import check_tracker

        check_tracker(cfg.track)
    few_arenas()
    with imports_frozen(), process_group(cfg.eval.device) as env, ExitStack() as held:
        say = stages.console(log, env)
        group = stages.shard_stage(cfg, env)  # parallel.shard's mesh, before anything is loaded or written
        plan = make_levels(shape_only(cfg.grid), cfg.direction.count)[""]  # its shape; grid.x=auto is resolved below
        memory = StageMemory(env.device)
        rows: Rows | None = None
        by_rows, load_note = reads_rows(cfg, group, given is None)
        with memory.stage("load"):
            if given is None:
                data = load_data(cfg.data, cfg.model.path)
                if group is not None and by_rows:
                    model = row_model(cfg, data, env, group)  # sharded as built: each rank reads its rows
                    target, rows = row_target(model, cfg)
                else:
                    model = stages.prepare_model(cfg, data, env, log=log and env.is_main)
                split = stages.eval_split(cfg, data)
                resolved = stages.fingerprinted(cfg, resolved, split)
                loss = stages.loss_stage(cfg, model, split, env)
            else:
                data, model = None, given.model.to(env.device).eval()
                split = stages.given_split(cfg, given.split)
                loss = stages.probed(given.loss, model, split, env)
            d = cfg.direction  # theta* taken before any change of memory format:
            if rows is None:
                target = perturbed(model, d.over, d.include, d.exclude, d.frozen)
            channels_last = stages.uses_channels_last(cfg, split)
            if channels_last:
                model, split = stages.to_channels_last(model, split)
        release_freed_memory()  # the loader's copies and the fingerprint's buffers: only the model stays
        with memory.stage("directions"):
            hvp_batches = stages.hessian_stage_batches(cfg, split, env)
            if group is not None and rows is not None:
                made, fingerprint = row_directions(cfg, model, target, rows, plan.ndim, group, env)
            else:
                made = stages.directions_stage(cfg, model, target, plan, hvp_batches, env, loss,
                                               data.train if data is not None else given.train if given else None)
                fingerprint = stages.agree_across_ranks(env, model, made)
        release_freed_memory()  # the raw draws and hashing buffers: only the directions stay
        levels, auto = autogrid.grid_stage(cfg, resolved, autogrid.Swept(model, target, made, split, loss), env,
                                           fingerprint, say)
        plan = levels[""]
        note = stages.trajectory_note(made, plan)
        if note:
            say(note)
        with memory.stage("store"):
            spec = stages.store_spec(cfg, resolved, levels, target, made, fingerprint, loss.metrics, rows)
            spec.attrs.update(autogrid.layout_attrs(cfg, auto))
            writer = checker = None
            if group is not None and rows is not None:
                writer, checker = deferred_writer(made, rows, group), deferred_check(made, target.names, rows, group)
            store = held.enter_context(stages.held_store(cfg, resolved, spec, env, writer, checker))
            spec.directions = []  # written: the store's lease keeps the spec, not the directions (a sharded run
            # lets go of the whole ones once it has cut its rows)
        release_freed_memory()  # the directions' chunk buffers and codecs' scratch
        if load_note is not None:
            logging.getLogger("engine").info(load_note)  # into the rank logs, open now that the store is held
        if group is not None and rows is None:  # spectrum and sharpness on the whole model, before it is sharded
            with memory.stage("curvature"):
                curvature(cfg, model, target, hvp_batches, resolved, env, store, say, loss, split)
            with memory.stage("shard"):
                target, made = stages.sharded(model, target, made, group)
            release_freed_memory()  # the whole weights and directions, now that each rank holds its rows
        say(f"sweeping {'x'.join(map(str, plan.shape))} points of {cfg.model.name} on {len(split)} "
            f"{cfg.eval.split} samples ({env.world_size} rank(s){stages.groups_note(group)}, {env.device}) "
            f"into {store}")
        with memory.stage("sweep"):
            tune_on = stages.tuning_plan(levels, store)
            batches, batch_size = stages.batches_stage(cfg, model, split, env, tune_on, loss, group)
            logging.getLogger("engine").info("eval batch size %d, channels_last %s", batch_size, channels_last)
            recalibrate = stages.recalibrator(cfg, data, model, batch_size, env, channels_last, loss,
                                              given.train if given else None)
            runner = stages.runner_stage(cfg, model, target, made, batches, env, tune_on, recalibrate, hvp_batches,
                                         loss, group)
            tiles = stages.sweep_stage(runner, levels, store, cfg, env, group)
        del runner, batches  # the stacked evaluator's copies and the cached batches are not needed past the sweep
        made.directions.clear()  # in the store now: the spectrum and the sharpness ascents hold their own vectors
        made.end = None
        release_freed_memory()
        if group is None:
            with memory.stage("curvature"):
                curvature(cfg, model, target, hvp_batches, resolved, env, store, say, loss, split)
        elif rows is not None and group.replica == 0 and sharpness_on(cfg):  # on the shards: the first group
            with memory.stage("curvature"):
                stages.sharpness_stage(model, split, cfg, env, store, loss, group)
        held.close()  # the store's lease is released before the summary, as the sweep's last step
        result = RunResult(stages.run_dir_of(cfg), store, tiles)
        ranks = ranks_and_devices(env)
        if env.is_main:
            with memory.stage("summary"):
                result.summary = stages.summary_stage(cfg, store)
                write_provenance(result.run_dir, store, env, ranks, started, time.perf_counter() - start)
            with memory.stage("figures"):
                result.figures = stages.figures_stage(cfg, store)
            if cfg.track is not None:  # the tracker's extra is imported only when asked for
                from engine.app.trackers import log_run

                log_run(result.run_dir, cfg.track)
            report(result, time.perf_counter() - start, len(tiles), say)
        memory.log(sum(p.numel() for p in model.parameters()))
    return result

def curvature(cfg: RunConfig, model: nn.Module, target: PerturbedTensors, hvp_batches: HessianBatches,
              resolved: dict[str, Any], env: DistEnv, store: Path, say: stages.Say, loss: Loss,
              split: AnySplit) -> None:
    """The spectrum at theta* (every rank) and the sharpness numbers (rank 0), when asked for."""
    if cfg.hessian.spectrum:
        stages.spectrum_stage(model, target, hvp_batches, cfg, resolved, env, store, say, loss)
    if sharpness_on(cfg):
        on_main(env, lambda: stages.sharpness_stage(model, split, cfg, env, store, loss))


def sharpness_on(cfg: RunConfig) -> bool:
    """Whether the run computes a sharpness number (epsilon- or adaptive sharpness)."""
    return cfg.summary.epsilon is not None or cfg.summary.adaptive_radius is not None


def report(result: RunResult, seconds: float, tiles: int, say: stages.Say) -> None:
    """The run's last console lines: time, the center's numbers, a partial store's warning, where things are."""
    center = result.summary["center"]
    numbers = ", ".join(f"{'center ' if k == 'loss' else ''}{k} {v}" for k, v in center.items() if k != "coords")
    say(f"done in {seconds:.1f} s ({tiles} tile(s) on rank 0); {numbers}")
    if not result.summary["complete"]:
        say(f"warning: {len(result.summary['missing_tiles'])} tile(s) are not done; run the same command again")
    say(f"store:   {result.store}\nsummary: {result.run_dir / 'summary.json'}\nfigures: {result.run_dir / 'figures'}")
    if (result.run_dir / "report.html").is_file():
        say(f"report:  {result.run_dir / 'report.html'} (interactive: {result.run_dir / 'figures' / 'landscape.html'})")

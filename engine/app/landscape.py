"""The stages of one run, in order: data, model (trained or loaded), directions, store, sweep, summary, plots.

Works the same in one process and on N ranks (torchrun, SLURM): rank 0 trains and creates the store, every
rank checks it holds the same weights and directions, all ranks sweep, rank 0 assembles and draws.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn

from engine.config.record import write_config_record
from engine.config.schema import HessianConfig, PlotConfig, RunConfig
from engine.core.dist import DistEnv, barrier, broadcast_value, check_same, init_distributed, on_main, tensors_hash
from engine.core.hostalloc import keep_freed_memory
from engine.curvature.sharpness import epsilon_sharpness
from engine.curvature.spectra import (
    CURVATURE_METRICS,
    CurvatureProbe,
    compute_spectrum,
    hessian_batches,
    hessian_directions,
    hessian_params,
    read_spectrum,
    stored_spectrum_config,
    write_spectrum,
)
from engine.directions import vectors as dirs
from engine.directions.checkpoints import KINDS as CHECKPOINT_KINDS
from engine.directions.checkpoints import CheckpointDirections, checkpoint_directions
from engine.sources.batchnorm import BatchNormRecalibrator, batchnorm_buffers
from engine.sources.data import DataBundle, Split, choose_batch_size, device_batches, eval_batches, load_data, subsample
from engine.sources.losses import METRICS
from engine.sources.models import build_model, load_checkpoint, state_fingerprint
from engine.sources.train import train_model
from engine.store.assemble import assemble
from engine.store.grid import PREVIEW, GridPlan, make_levels
from engine.store.layout import StoreSpec, Surface, open_store, read_array, read_surface
from engine.store.lease import StoreLease
from engine.sweep.perturb import Perturber
from engine.sweep.rewrite import rewrite
from engine.sweep.tiles import Work, pending_work, sweep_tiles
from engine.sweep.vectorized import PointRunner, choose_k, make_evaluator, points_per_pass

DEFAULT_BATCH = 128  # eval batch size when it is neither set nor timed (a complete store: nothing to evaluate)


@dataclass
class RunResult:
    """Where a run put its outputs (summary and figures on rank 0 only) and the tiles this rank computed."""

    run_dir: Path
    store: Path
    tiles_computed: list[Work]
    summary: dict[str, Any] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def prepare_model(cfg: RunConfig, data: DataBundle, env: DistEnv, log: bool = True) -> nn.Module:
    """Build the model and give it its weights: the configured checkpoint, or trained ones (rank 0 trains)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint)
    else:
        ckpt_dir = run_dir_of(cfg) / "checkpoints"
        on_main(env, lambda: train_model(model, data, cfg.train, ckpt_dir, env.device, log=log))
        barrier()
        if not env.is_main:
            load_checkpoint(model, ckpt_dir / "final.pt")
    return model.to(env.device).eval()


def run_train(cfg: RunConfig) -> Path:
    """The train stage alone: per-epoch checkpoints and final.pt under <run dir>/checkpoints."""
    prepare_model(cfg, load_data(cfg.data), init_distributed(cfg.eval.device))
    return run_dir_of(cfg) / "checkpoints" / "final.pt"


def make_runner(
    cfg: RunConfig, model: nn.Module, names: list[str], tensors: list[torch.Tensor],
    directions: list[list[torch.Tensor]], batches: Any, env: DistEnv, tune_on: GridPlan | None,
    end: list[torch.Tensor] | None = None, recalibrate: BatchNormRecalibrator | None = None,
    logged: list[bool] | None = None,
) -> PointRunner:
    """The point evaluator: K stacked points under vmap where the model allows it, else in place (K = 1).

    eval.points_per_pass fixes K; left null, rank 0 times K = 1, 2, 4, ... up to what eval.memory_gb allows
    on points of tune_on (None: no timing) and every rank uses its choice (so all ranks compute alike).
    """
    e = cfg.eval
    perturber = Perturber(tensors, directions, end, recalibrate,
                          batchnorm_buffers(model) if recalibrate is not None else None, logged)
    theta = [t.detach() for t in tensors]
    in_place_only = end is not None or recalibrate is not None  # lerped points, per-point BN statistics
    on = set(e.rewrites)
    fast: nn.Module | None = None
    if e.compile:  # inductor fuses by itself; the rewrites' Python-side caches would make it recompile per point
        fast = torch.compile(model)
    elif on:
        fast = rewrite(
            model, names, perturber.theta, directions, batches[0][0][:8], fold_batchnorm="fold_batchnorm" in on,
            input_products="input_products" in on and isinstance(batches, list) and end is None,
            in_place="in_place" in on,
            transposed_head="transposed_head" in on, budget_gb=e.memory_gb / 4)
        if fast is not None:
            fast.register([x for x, _ in batches])
    evaluator = None if e.points_per_pass == 1 or in_place_only else make_evaluator(
        model, names, theta, directions, batches, e.precision, logged)
    runner = PointRunner(model, perturber, batches, e.precision, evaluator, e.points_per_pass or 1, fast)
    if e.points_per_pass is None and evaluator is not None and tune_on is not None:
        k_max = points_per_pass(model, theta, batches, e.memory_gb)
        grid = np.stack(np.meshgrid(*tune_on.coords, indexing="ij"), -1).reshape(-1, len(directions))
        with perturber.active():
            picked = on_main(env, lambda: choose_k(runner, grid[:: max(1, len(grid) // 64)], k_max))
        runner.k = broadcast_value(env, picked)
        logging.getLogger("engine").info("points per pass: K=%d (memory allows %d)", runner.k, k_max)
    return runner


def rank_log(run_dir: Path, env: DistEnv) -> None:
    """Send this rank's engine log records to <run dir>/logs/rank<N>.log."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("engine")
    path = str((run_dir / "logs" / f"rank{env.rank}.log").resolve())
    for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:  # an earlier run's (multirun)
        logger.removeHandler(old)
        old.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # per-tile lines go to the rank's file, not the console (rank 0 shows a bar)


def run_landscape(cfg: RunConfig, resolved: dict[str, Any], log: bool = True) -> RunResult:
    """Train or load, sweep the grid into the store (resuming), summarize and draw; returns the outputs."""
    start = time.perf_counter()
    env = init_distributed(cfg.eval.device)
    say = print if (log and env.is_main) else (lambda *_: None)
    run_dir = run_dir_of(cfg)
    levels = make_levels(cfg.grid)
    plan = levels[""]
    data = load_data(cfg.data)
    model = prepare_model(cfg, data, env, log=log and env.is_main)
    named = dirs.perturbed_tensors(model, cfg.direction.over)
    names, tensors = [n for n, _ in named], [t for _, t in named]
    theta = [t.detach() for t in tensors]
    logged = dirs.log_space(model, names)  # BatchNorm running variances move in log space
    split = subsample(data.test if cfg.eval.split == "test" else data.train, cfg.eval.samples, cfg.data.seed)
    e, h, d = cfg.eval, cfg.hessian, cfg.direction
    channels_last = e.channels_last if e.channels_last is not None else split.x.dim() == 4
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        split = Split(split.x.contiguous(memory_format=torch.channels_last), split.y)
    needs_hessian = h.spectrum or h.curvature or d.kind == "hessian"
    hvp_batches = hessian_batches(split, h, cfg.data.seed, env.device) if needs_hessian else []
    made = CheckpointDirections([])
    if d.kind == "random":
        directions = dirs.random_directions(dirs.to_coordinates(theta, logged), plan.ndim, d.seed, d.norm, d.ignore,
                                            logged)
    elif d.kind in CHECKPOINT_KINDS:  # the checkpoints' own geometry: no normalization
        made = checkpoint_directions(d, model, names, theta, run_dir, plan.ndim, logged)
        directions = made.directions
    else:
        raw = (hessian_directions(model, tensors, hvp_batches, h, env, plan.ndim) if d.kind == "hessian"
               else dirs.load_directions(d.path, names, theta, plan.ndim))
        directions = [dirs.normalize(r, dirs.to_coordinates(theta, logged), d.norm, d.ignore, logged) for r in raw]
    fingerprint = state_fingerprint(model)
    check_same(env, "model weights (fingerprints)", fingerprint)
    check_same(env, "directions (hashes)", tensors_hash([t for dk in directions for t in dk]))
    store_path = Path(cfg.store.path) if cfg.store.path else run_dir / "landscape.zarr"
    metrics = METRICS + (CURVATURE_METRICS if h.curvature else ())
    if made.trajectory is not None:
        lo, hi = made.trajectory.min(0), made.trajectory.max(0)
        if any(lo[k] < c[0] or hi[k] > c[-1] for k, c in enumerate(plan.coords)):
            pad = 0.1 * (hi - lo)
            say(f"note: the projected trajectory spans x [{lo[0]:.3g}, {hi[0]:.3g}], y [{lo[1]:.3g}, {hi[1]:.3g}]: "
                f"beyond the grid; grid.x=[{lo[0] - pad[0]:.3g},{hi[0] + pad[0]:.3g}] "
                f"grid.y=[{lo[1] - pad[1]:.3g},{hi[1] + pad[1]:.3g}] shows it whole")
    extra = {"markers": made.markers or {"theta*": [0.0] * plan.ndim}, "axis_labels": made.axis_labels}
    if made.explained is not None:
        extra["explained_variance"] = made.explained
    if any(logged):
        extra["log_space"] = [n for n, m in zip(names, logged) if m]
    arrays = {"trajectory/coords": made.trajectory} if made.trajectory is not None else {}
    spec = StoreSpec(resolved, levels, names, [tuple(t.shape) for t in tensors], directions, fingerprint, metrics,
                     extra, arrays)
    lease = StoreLease(store_path, ttl=cfg.store.lease_ttl)

    def create() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        lease.acquire()
        try:
            open_store(store_path, spec, overwrite=cfg.store.overwrite)
        except BaseException:
            lease.release()
            raise
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        write_config_record(run_dir)  # .hydra/ of a CLI job, now that the store accepted this config

    on_main(env, create)
    try:
        barrier()
        rank_log(run_dir, env)  # only once the store accepted this config: a refused rerun leaves the folder as it was
        if e.host_malloc and env.device.type == "cpu":
            keep_freed_memory()
        root = zarr.open_group(store_path, mode="r+")
        say(f"sweeping {'x'.join(map(str, plan.shape))} points of {cfg.model.name} on {len(split.y)} "
            f"{cfg.eval.split} samples ({env.world_size} rank(s), {env.device}) into {store_path}")
        tune_on = plan if pending_work(levels, root) else None  # nothing pending: no timing either
        batch_size = e.batch_size or (broadcast_value(env, on_main(env, lambda: choose_batch_size(
            model, subsample(split, 4096), env.device, e.precision))) if tune_on is not None else DEFAULT_BATCH)
        logging.getLogger("engine").info("eval batch size %d, channels_last %s", batch_size, channels_last)
        batches = eval_batches(split, batch_size, env.device, e.cache, e.memory_gb)
        recalibrate = None
        if e.recalibrate_bn:
            train = subsample(data.train, e.recalibrate_samples, cfg.data.seed)
            if channels_last:
                train = Split(train.x.contiguous(memory_format=torch.channels_last), train.y)
            recalibrate = BatchNormRecalibrator(model, device_batches(train, batch_size, env.device))
        runner = make_runner(cfg, model, names, tensors, directions, batches, env, tune_on, made.end, recalibrate,
                             logged)
        if h.curvature:
            runner.curvature = CurvatureProbe(model, hessian_params(tensors), hvp_batches, h)
        tiles = sweep_tiles(runner, levels, root, progress=cfg.eval.progress, env=env)
        barrier()
        if h.spectrum:
            spectrum_stage(model, tensors, hvp_batches, h, resolved["hessian"], env, store_path, say)
        if cfg.summary.epsilon is not None:
            on_main(env, lambda: sharpness_stage(model, split, cfg, env, store_path))
    finally:
        if env.is_main:
            lease.release()
    result = RunResult(run_dir, store_path, tiles)
    if env.is_main:
        result.summary = assemble(store_path, cfg.summary.basin_rise, run_dir / "summary.json",
                                  cfg.summary.sharpness_radius)
        result.figures = draw(store_path, run_dir / "figures", cfg.plot) if cfg.plot.enabled else []
        say(f"done in {time.perf_counter() - start:.1f} s ({len(tiles)} tile(s) on rank 0); center loss "
            f"{result.summary['center']['loss']}, accuracy {result.summary['center']['accuracy']}")
        if not result.summary["complete"]:
            say(f"warning: {len(result.summary['missing_tiles'])} tile(s) are not done; run the same command again")
        say(f"store:   {store_path}\nsummary: {run_dir / 'summary.json'}\nfigures: {run_dir / 'figures'}")
    return result


def spectrum_stage(model: nn.Module, tensors: list[torch.Tensor], batches: Any, cfg: HessianConfig,
                   settings: dict[str, Any], env: DistEnv, store_path: Path, say: Any) -> None:
    """Spectra at theta* into the store's hessian/ group (all ranks compute, rank 0 writes); skipped when the
    store already holds a spectrum computed with the same hessian settings."""
    if stored_spectrum_config(store_path) == settings:
        say("spectrum: already in the store with these hessian settings")
        return
    say(f"spectrum at theta*: top {cfg.top_k} eigenpairs, traces, SLQ density ({env.world_size} rank(s))")
    spectrum = compute_spectrum(model, hessian_params(tensors), batches, cfg, env)
    on_main(env, lambda: write_spectrum(zarr.open_group(store_path, mode="r+"), spectrum, settings))
    barrier()


def sharpness_stage(model: nn.Module, split: Split, cfg: RunConfig, env: DistEnv, store_path: Path) -> None:
    """Keskar et al.'s epsilon-sharpness at theta* into the store's attributes (summary.json reads it there)."""
    s = cfg.summary
    batches = device_batches(subsample(split, s.sharpness_samples, cfg.data.seed), 256, env.device)
    count = sum(len(y) for _, y in batches)
    root = zarr.open_group(store_path, mode="r+")
    old = root.attrs.get("epsilon_sharpness") or {}
    if (old.get("epsilon"), old.get("steps"), old.get("samples")) == (s.epsilon, s.epsilon_steps, count):
        return  # already in the store (a resumed or repeated run)

    def mean_loss() -> torch.Tensor:
        return sum(F.cross_entropy(model(x).float(), y, reduction="sum") for x, y in batches) / count

    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    result = epsilon_sharpness(mean_loss, params, s.epsilon, s.epsilon_steps, seed=cfg.direction.seed)
    root.attrs["epsilon_sharpness"] = {**result, "samples": count}


def surface_to_draw(store_path: str | Path) -> tuple[Surface, str]:
    """The full surface when complete; else the complete coarse preview if there is one; and a title suffix."""
    surface = read_surface(store_path)
    if bool(surface.done.all()):
        return surface, ""
    done = f"{int(surface.done.sum())}/{surface.done.size} tiles done"
    if PREVIEW in surface.attrs.get("levels", []):
        preview = read_surface(store_path, PREVIEW)
        if bool(preview.done.all()):
            return preview, f" [partial: coarse preview, {done}]"
    return surface, f" [partial: {done}]"


def draw(store_path: str | Path, out_dir: str | Path, plot: PlotConfig | None = None) -> list[Path]:
    """Draw every figure of a store into out_dir (redraws from the store alone, no recompute).

    While the full grid is incomplete, the complete coarse preview is drawn instead, marked as partial.
    """
    from engine.figures.curvature import draw_curvature_maps, draw_density, draw_eigenvalues
    from engine.figures.surfaces import draw_surfaces

    plot = plot or PlotConfig()
    surface, state = surface_to_draw(store_path)
    conf = surface.attrs["config"]
    title = f"{conf['model']['name']} on {conf['data']['name']} ({conf['direction']['norm']}-normalized){state}"
    markers = surface.attrs.get("markers") or {"theta*": [0.0 for _ in surface.coords]}
    markers = {name: tuple(point) for name, point in markers.items()}
    m = surface.metrics
    formats = list(plot.formats)
    labels = surface.attrs.get("axis_labels", ["d1", "d2"])
    trajectory = read_array(store_path, "trajectory/coords") if len(surface.coords) == 2 else None
    paths = draw_surfaces(surface.coords, {k: v for k, v in m.items() if k in METRICS}, out_dir, title=title,
                          axis_labels=labels, log_scale=plot.log_scale, clip=plot.clip, formats=formats,
                          markers=markers, path=trajectory)
    if all(k in m for k in CURVATURE_METRICS):
        paths += draw_curvature_maps(tuple(surface.coords), m["loss"], *(m[k] for k in CURVATURE_METRICS), out_dir,
                                     formats=formats, title=title, markers=markers)
    spectrum = read_spectrum(store_path)
    if spectrum is not None:
        name = f"{conf['model']['name']} on {conf['data']['name']}, Hessian at theta*"
        paths += draw_density(spectrum.grid, spectrum.density, out_dir, formats=formats, title=name)
        paths += draw_eigenvalues(spectrum.eigenvalues, out_dir, formats=formats, title=name,
                                  lambda_min=spectrum.lambda_min)
    return paths

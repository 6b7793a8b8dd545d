"""The stages of a run, each a plain function returning a plain value, so each can be called and tested alone:
the model, the eval split, the directions, the store, the eval batches, the runner, the sweep, the spectrum, the
sharpness, the summary and the figures. `run_landscape` and `run_spectrum` are these calls in order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from engine.config.cross import PCA_MIN_CHECKPOINTS, check_combination
from engine.config.record import write_config_record
from engine.config.schema import RunConfig
from engine.core.dist import DistEnv, barrier, broadcast_value, check_same, on_main, tensors_hash
from engine.core.errors import UserError
from engine.core.hostalloc import keep_freed_memory, returning_freed_memory
from engine.curvature.adaptive import adaptive_sharpness
from engine.curvature.batched import BatchedLoss, gradient_batch_size
from engine.curvature.param_view import WholeView
from engine.curvature.sharpness import epsilon_sharpness
from engine.curvature.spectra import (
    CURVATURE_METRICS,
    CurvatureProbe,
    compute_spectrum,
    hessian_batches,
    hessian_directions,
    hessian_params,
)
from engine.curvature.spectra import Batches as HessianBatches  # a list: the Hessian's batches are indexed
from engine.directions.curve_training import bends_for, curve_settings, saved_bends
from engine.directions.curves import check_batchnorm
from engine.directions.factory import make_directions
from engine.directions.kinds import Directions
from engine.directions.kinds import in_dtype as directions_in_dtype
from engine.directions.lines import check_lines_fit
from engine.directions.trajectory import list_checkpoints
from engine.directions.vectors import PerturbedTensors
from engine.sources.batches import EvalBatches, device_batches, eval_batches
from engine.sources.batchnorm import BatchNormRecalibrator
from engine.sources.checkpoints import State, load_checkpoint, state_fingerprint
from engine.sources.loss_kinds import make_loss
from engine.sources.losses import Loss
from engine.sources.models import build_model
from engine.sources.splits import AnySplit, DataBundle, DatasetSplit, Split, held, split_fingerprint, subsample
from engine.sources.structure import to_device
from engine.sources.train import train_model
from engine.store.assemble import assemble
from engine.store.grid import GridPlan
from engine.store.integrity import summary_line
from engine.store.layout import StoreSpec, get_attribute, open_existing, open_store, set_attribute, store_attrs
from engine.store.lease import StoreLease
from engine.store.repair import repair_store
from engine.store.spectra import hessian_settings, same_numbers, set_tolerance, stored_spectrum_config, write_spectrum
from engine.store.stored_directions import CHECKED_KINDS, differing_message, first_difference
from engine.store.tiles import Work, pending_work
from engine.sweep.runner import choose_batch_size, make_runner
from engine.sweep.tiles import sweep_tiles
from engine.sweep.vectorized import PointRunner

if TYPE_CHECKING:  # FSDP2's modules load only for sharded runs
    from engine.sweep.sharded import ShardGroup
    from engine.sweep.sharded_setup import Rows


@dataclass
class Given:
    """What a Python caller hands over instead of config sections: a trained model (never trained again), the eval
    set as given (never re-split), and the loss."""

    model: nn.Module
    split: AnySplit
    loss: Loss
    train: AnySplit | None = None  # training samples (direction=curve trains its bends on them)


DEFAULT_BATCH = 128  # eval batch size when it is neither set nor timed (a complete store: nothing to evaluate)
SHARDED_BATCH = 8  # eval batch size of a sharded model when not set (large models: its activations stay small)

Say = Callable[[str], None]


def console(log: bool, env: DistEnv) -> Say:
    """Where the run's console lines go: printed on rank 0 when log is on, dropped elsewhere."""
    return print if (log and env.is_main) else (lambda _: None)


def run_dir_of(cfg: RunConfig) -> Path:
    """The run's folder: <out_dir>/<name>."""
    return Path(cfg.out_dir) / cfg.name


def store_path_of(cfg: RunConfig) -> Path:
    """The run's landscape store: store.path, else <run dir>/landscape.zarr."""
    return Path(cfg.store.path) if cfg.store.path else run_dir_of(cfg) / "landscape.zarr"


def preflight(cfg: RunConfig) -> None:
    """Refuse, before any data is loaded or a model trained, a config whose settings contradict each other or whose
    input files are missing (the checkpoints, the direction file, a PCA trajectory with too few checkpoints)."""
    check_combination(cfg)
    d = cfg.direction
    inputs = [("model.checkpoint", cfg.model.checkpoint)]
    inputs += [("direction.checkpoints", p) for p in d.checkpoints if d.kind in ("interpolation", "plane", "curve")]
    inputs += [("direction.path", d.path)] if d.kind == "file" else []
    for key, path in inputs:
        if path and not Path(path).exists():
            what = "direction file" if key == "direction.path" else "checkpoint"
            raise UserError(f"{what} {path} does not exist; give {key}=<an existing file>")
    folder = Path(d.trajectory) if d.trajectory else run_dir_of(cfg) / "checkpoints" if cfg.model.checkpoint else None
    if d.kind == "pca" and folder is not None and len(list_checkpoints(folder)) < PCA_MIN_CHECKPOINTS:
        raise UserError(f"direction=pca needs at least {PCA_MIN_CHECKPOINTS} checkpoints (epoch_*.pt) in {folder}, "
                        f"it holds {len(list_checkpoints(folder))}; give direction.trajectory=<a training run's "
                        "checkpoints/ folder>")
    if cfg.eval.precision != "fp32" and cfg.eval.device == "auto" and not torch.cuda.is_available():
        raise UserError(f"eval.precision={cfg.eval.precision} is autocast on CUDA devices and none is visible; use "
                        "eval.precision=fp32")


def prepare_model(cfg: RunConfig, data: DataBundle, env: DistEnv, log: bool = True,
                  loss: Loss | None = None) -> nn.Module:
    """Build the model and give it its weights: the configured checkpoint, a pretrained folder's (model=hf), or
    trained ones (rank 0 trains, minimizing the configured loss)."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if cfg.model.name == "hf" and "vocab_size" in data.extra:  # token ids and block length the model can take
        from engine.sources.hf import check_text_fits

        check_text_fits(model, data.extra["vocab_size"], cfg.data.block_size, data.extra.get("pad_token_id"))
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint)
    elif cfg.model.name != "hf":  # a saved transformers folder holds its weights
        ckpt_dir = run_dir_of(cfg) / "checkpoints"
        objective = loss or make_loss(cfg.loss)
        on_main(env, lambda: train_model(model, data, cfg.train, ckpt_dir, env.device, log=log, loss=objective))
        barrier()
        if not env.is_main:
            load_checkpoint(model, ckpt_dir / "final.pt")
    return in_dtype(model.to(env.device), getattr(torch, cfg.model.dtype)).eval()


def in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model's floating tensors in dtype, and its floating inputs cast to it on the way in (images of a
    bfloat16 model); a float32 model is returned as it is."""
    if dtype == torch.float32:
        return model
    model = model.to(dtype)

    def cast(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def one(v: Any) -> Any:
            return v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}

    model.register_forward_pre_hook(cast, with_kwargs=True)
    return model


def eval_split(cfg: RunConfig, data: DataBundle) -> AnySplit:
    """The samples every grid point is evaluated on: eval.samples of the eval split (seeded), held in memory, or
    left in its Dataset (read through a DataLoader every pass) when it would take over half of eval.memory_gb."""
    split = subsample(data.test if cfg.eval.split == "test" else data.train, cfg.eval.samples, cfg.data.seed)
    if isinstance(split, DatasetSplit) and split.approx_bytes() <= cfg.eval.memory_gb * 2**30 / 2:
        return split.materialize(256, cfg.eval.workers)
    return split


def fingerprinted(cfg: RunConfig, resolved: dict[str, Any], split: AnySplit) -> dict[str, Any]:
    """The resolved config with data.fingerprint (a hash of every value of the eval set) for a source of the user's
    own (data=custom): the files its Dataset reads can change under the same config, and a store computed on other
    data must never be resumed as if it were this data's."""
    if cfg.data.name != "custom":
        return resolved
    return {**resolved, "data": {**resolved["data"], "fingerprint": split_fingerprint(split, 256, cfg.eval.workers)}}


def given_split(cfg: RunConfig, split: AnySplit) -> AnySplit:
    """An eval set handed over from Python: all of it in its order (eval.samples subsamples it, seeded), held in
    memory when it fits half of eval.memory_gb."""
    split = subsample(split, cfg.eval.samples, cfg.data.seed)
    if isinstance(split, DatasetSplit) and split.approx_bytes() <= cfg.eval.memory_gb * 2**30 / 2:
        return split.materialize(256, cfg.eval.workers)
    return split


def loss_stage(cfg: RunConfig, model: nn.Module, split: AnySplit, env: DistEnv) -> Loss:
    """The configured loss, its metrics known (a custom loss is called once on the first eval samples for them)."""
    return probed(make_loss(cfg.loss), model, split, env)


def probed(loss: Loss, model: nn.Module, split: AnySplit, env: DistEnv) -> Loss:
    """The loss after one call on the split's first two samples: its metrics are then known, and a loss that cannot
    read these batches fails here, in one line, before any store is written."""
    first = split.batch(0, 2) if isinstance(split, Split) else next(iter(split.batches(2)))
    loss.probe(model, to_device(first, env.device))
    return loss


def uses_channels_last(cfg: RunConfig, split: AnySplit) -> bool:
    """eval.channels_last, or (left null) whether the inputs are images held in memory; never for a sharded model
    (FSDP2 shards contiguous parameters only)."""
    if cfg.parallel.shard > 1:
        return False
    if cfg.eval.channels_last is not None:
        return cfg.eval.channels_last
    return isinstance(split, Split) and isinstance(split.x, torch.Tensor) and split.x.dim() == 4


def to_channels_last(model: nn.Module, split: AnySplit) -> tuple[nn.Module, AnySplit]:
    """The model and the split's images in channels_last memory format (faster convolutions; same parameters)."""
    model = model.to(memory_format=torch.channels_last)
    if isinstance(split, Split) and isinstance(split.x, torch.Tensor) and split.x.dim() == 4:
        split = Split(split.x.contiguous(memory_format=torch.channels_last), split.y)
    return model, split


def hessian_stage_batches(cfg: RunConfig, split: AnySplit, env: DistEnv, always: bool = False) -> HessianBatches:
    """The Hessian's batches when a spectrum, a curvature map or Hessian directions are asked for (or always),
    else none."""
    h = cfg.hessian
    if always or h.spectrum or h.curvature or cfg.direction.kind == "hessian":
        return hessian_batches(split, h, cfg.data.seed, env.device)
    return []


def directions_stage(cfg: RunConfig, model: nn.Module, target: PerturbedTensors, plan: GridPlan,
                     hvp_batches: HessianBatches, env: DistEnv, loss: Loss | None = None,
                     train: AnySplit | None = None) -> Directions:
    """The configured kind's directions (Hessian eigenvectors computed on every rank when asked for; a curve's bends
    trained on `train` by rank 0, or read from an earlier run's curve/bends.pt)."""
    def curve_bends(end: State) -> list[State]:
        return curve_stage(cfg, model, target, end, train, env, loss or make_loss(cfg.loss))

    def hessian_axes(ndim: int) -> list[list[torch.Tensor]]:
        return hessian_directions(model, target.tensors, hvp_batches, cfg.hessian, env, ndim,
                                  loss or make_loss(cfg.loss), progress=cfg.eval.progress and env.is_main)

    if cfg.direction.count > 1:
        check_lines_fit(cfg.direction, target, cfg.eval.memory_gb)
    made = make_directions(cfg.direction, model, target, plan.ndim, run_dir_of(cfg), hessian_axes,
                           progress=cfg.eval.progress and env.is_main, curve_bends=curve_bends,
                           dtype=getattr(torch, cfg.direction.dtype))
    return directions_in_dtype(made, getattr(torch, cfg.direction.dtype))


def curve_stage(cfg: RunConfig, model: nn.Module, target: PerturbedTensors, end: State, train: AnySplit | None,
                env: DistEnv, loss: Loss) -> list[State]:
    """The bends of direction=curve from theta* to B (end): trained on rank 0 (or reused from <run dir>/curve/bends.pt
    when trained with the same settings), then read from that file by the other ranks."""
    if train is None:
        raise UserError("direction=curve trains its bends on training data: pass train_data=<a Dataset, DataLoader or "
                        "(inputs, targets)> to engine.landscape")
    check_batchnorm(model, cfg.eval.recalibrate_bn)
    path = run_dir_of(cfg) / "curve" / "bends.pt"
    show = cfg.eval.progress and env.is_main
    found = on_main(env, lambda: bends_for(path, model, target.names, target.theta, end, train, loss, cfg.direction,
                                           show))
    barrier()
    if env.is_main:
        return cast("list[State]", found)
    return cast("list[State]", saved_bends(path, curve_settings(cfg.direction, model, end, target.names)))


def agree_across_ranks(env: DistEnv, model: nn.Module, made: Directions) -> str:
    """Refuse to go on unless every rank holds the same weights and directions; returns the weights' fingerprint."""
    fingerprint = state_fingerprint(model)
    check_same(env, "model weights (fingerprints)", fingerprint)
    check_same(env, "directions (hashes)", tensors_hash([t for dk in made.directions for t in dk]))
    return fingerprint


def trajectory_note(made: Directions, plan: GridPlan) -> str | None:
    """A hint with the grid range that shows the whole projected trajectory, when it runs beyond the grid."""
    if made.trajectory is None:
        return None
    lo, hi = made.trajectory.min(0), made.trajectory.max(0)
    if not any(lo[k] < c[0] or hi[k] > c[-1] for k, c in enumerate(plan.coords)):
        return None
    pad = 0.1 * (hi - lo)
    return (f"note: the projected trajectory spans x [{lo[0]:.3g}, {hi[0]:.3g}], y [{lo[1]:.3g}, {hi[1]:.3g}]: "
            f"beyond the grid; grid.x=[{lo[0] - pad[0]:.3g},{hi[0] + pad[0]:.3g}] "
            f"grid.y=[{lo[1] - pad[1]:.3g},{hi[1] + pad[1]:.3g}] shows it whole")


def store_spec(cfg: RunConfig, resolved: dict[str, Any], levels: dict[str, GridPlan], target: PerturbedTensors,
               made: Directions, fingerprint: str, metrics: tuple[str, ...],
               rows: Rows | None = None) -> StoreSpec:
    """What the store is created from (and checked against when it exists): config, grid, directions, weights, and
    the loss's metrics (curvature maps' added when asked for). With rows (a sharded load), the directions are only
    this rank's rows: the spec records the whole shapes and defers the directions to the shard group's writer."""
    ndim = levels[""].ndim
    metrics = metrics + (CURVATURE_METRICS if cfg.hessian.curvature else ())
    extra: dict[str, Any] = {"markers": made.markers or {"theta*": [0.0] * ndim}, "axis_labels": made.axis_labels}
    if made.explained is not None:
        extra["explained_variance"] = made.explained
    if any(target.logged):
        extra["log_space"] = [n for n, m in zip(target.names, target.logged) if m]
    arrays = {"trajectory/coords": made.trajectory} if made.trajectory is not None else {}
    if rows is not None:
        return StoreSpec(resolved, levels, target.names, rows.shapes, [], fingerprint, metrics, extra, arrays,
                         deferred=len(made.directions))
    return StoreSpec(resolved, levels, target.names, [tuple(t.shape) for t in target.tensors], made.directions,
                     fingerprint, metrics, extra, arrays)


@contextmanager
def held_store(cfg: RunConfig, resolved: dict[str, Any], spec: StoreSpec, env: DistEnv,
               write_deferred: Callable[[Path, StoreSpec, list[int]], None] | None = None,
               check_deferred: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Rank 0 takes the store's lease and opens (or creates) the store, refusing one of another config, or a resumed
    one whose directions differ from the run's; the lease is held until the block ends. Only then does the run folder
    get its config record and rank logs. Directions the spec defers (a sharded load) are then written by every rank
    together through write_deferred, and on resume checked by every rank, each its rows, through check_deferred."""
    run_dir, path = run_dir_of(cfg), store_path_of(cfg)
    lease = StoreLease(path, ttl=cfg.store.lease_ttl)

    notes: list[str] = []
    todo: list[int] = []
    resumed = [False]

    def create() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        lease.acquire()
        try:
            attrs = store_attrs(path) if path.exists() else None
            resumed[0] = (attrs is not None and not attrs.get("creating") and not cfg.store.overwrite
                          and cfg.direction.kind in CHECKED_KINDS)
            open_store(path, spec, overwrite=cfg.store.overwrite)
            repaired = repair_store(path, spec)
            todo.extend(repaired.directions)
            found = first_difference(path, spec.names, spec.shapes, spec.directions) if resumed[0] else None
            if found is not None:
                raise UserError(differing_message(path, found))
        except BaseException:
            lease.release()
            raise
        if repaired.damage:
            message = (f"store {path}: recomputing {repaired.tiles} damaged tile(s) "
                       f"({summary_line(repaired.damage)})")
            print(message, flush=True)
            notes.append(message)  # into rank 0's log once it is open (the console has it already)
        (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
        write_config_record(run_dir)  # .hydra/ of a CLI job, now that the store accepted this config

    on_main(env, create)
    try:
        if write_deferred is not None:
            write_deferred(path, spec, broadcast_value(env, todo))
        if check_deferred is not None and broadcast_value(env, resumed[0]):
            check_deferred(path)
        barrier()
        rank_log(run_dir, env)  # only once the store accepted this config: a refused rerun leaves the folder as it was
        for note in notes:
            logging.getLogger("engine").warning(note)
        if cfg.eval.host_malloc and env.device.type == "cpu":
            keep_freed_memory()
        yield path
    finally:
        if env.is_main:
            lease.release()


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


def tuning_plan(levels: dict[str, GridPlan], store: Path) -> GridPlan | None:
    """The grid to time the batch size and K on, or None when no tile is pending (nothing to evaluate or time)."""
    return levels[""] if pending_work(levels, open_existing(store)) else None


def shard_stage(cfg: RunConfig, env: DistEnv) -> ShardGroup | None:
    """parallel.shard's device mesh (None when each rank holds the whole model)."""
    if cfg.parallel.shard == 1:
        return None
    from engine.sweep.sharded import shard_group  # FSDP2's modules, for sharded runs only

    return shard_group(env, cfg.parallel.shard)


def sharded(model: nn.Module, target: PerturbedTensors, made: Directions,
            group: ShardGroup) -> tuple[PerturbedTensors, Directions]:
    """Shard the model over its group (FSDP2) and keep this rank's rows of the perturbed tensors and directions."""
    from engine.sweep.sharded import localize, shard_model

    blocks = shard_model(model, group)
    logging.getLogger("engine").info("model sharded over %d ranks: %d block(s) and the root", group.size, blocks)
    return localize(model, target, made, group)


def groups_note(group: ShardGroup | None) -> str:
    """', as R group(s) of S shards' (and the nodes rank 0's group spans) for the console line of a sharded run."""
    if group is None:
        return ""
    return f" as {group.replicas} group(s) of {group.size} shards, the first on {group.nodes} node(s)"


def batches_stage(cfg: RunConfig, model: nn.Module, split: AnySplit, env: DistEnv, tune_on: GridPlan | None,
                  loss: Loss, group: ShardGroup | None = None) -> tuple[EvalBatches, int]:
    """The eval batches and their size: eval.batch_size, else the fastest size timed on rank 0 (on up to 4096
    samples held in memory, 1024 of a streamed set); a sharded model is not timed (its forward is collective): 8."""
    e = cfg.eval
    if group is not None:
        return eval_batches(split, e.batch_size or SHARDED_BATCH, env.device, e.cache, e.memory_gb, e.workers), \
            e.batch_size or SHARDED_BATCH
    sample = 4096 if isinstance(split, Split) else 1024
    batch_size = e.batch_size or (broadcast_value(env, on_main(env, lambda: choose_batch_size(
        model, held(subsample(split, sample)), env.device, e.precision, loss=loss,
        budget_bytes=e.memory_gb * 2**30)))
        if tune_on is not None else DEFAULT_BATCH)
    return eval_batches(split, batch_size, env.device, e.cache, e.memory_gb, e.workers), batch_size


def recalibrator(cfg: RunConfig, data: DataBundle | None, model: nn.Module, batch_size: int, env: DistEnv,
                 channels_last: bool, loss: Loss, given_train: AnySplit | None = None) -> BatchNormRecalibrator | None:
    """With eval.recalibrate_bn, what recomputes the BatchNorm statistics on training samples at every point (the
    data's training split, or the train_data handed over from Python)."""
    if not cfg.eval.recalibrate_bn:
        return None
    source = data.train if data is not None else given_train
    if source is None:
        raise UserError("eval.recalibrate_bn needs the training data, which a model and eval set handed over from "
                        "Python do not include; pass train_data= to engine.landscape or leave it off")
    train = held(subsample(source, cfg.eval.recalibrate_samples, cfg.data.seed))
    if channels_last and isinstance(train.x, torch.Tensor) and train.x.dim() == 4:
        train = Split(train.x.contiguous(memory_format=torch.channels_last), train.y)
    return BatchNormRecalibrator(model, device_batches(train, batch_size, env.device), loss)


def runner_stage(cfg: RunConfig, model: nn.Module, target: PerturbedTensors, made: Directions, batches: EvalBatches,
                 env: DistEnv, tune_on: GridPlan | None, recalibrate: BatchNormRecalibrator | None,
                 hvp_batches: HessianBatches, loss: Loss, group: ShardGroup | None = None) -> PointRunner:
    """The point runner, with the curvature probe attached when curvature maps are asked for; on a sharded model,
    points one at a time as data-parallel steps of the group."""
    if group is not None:
        from engine.sweep.sharded import sharded_runner

        return sharded_runner(model, target, made, batches, group, cfg.eval.precision, loss)
    runner = make_runner(cfg, model, target.names, target.tensors, made.directions, batches, env, tune_on, made.end,
                         recalibrate, target.logged, loss, made.coefficients)
    if cfg.hessian.curvature:
        runner.curvature = CurvatureProbe(model, hessian_params(target.tensors), hvp_batches, cfg.hessian, loss)
    return runner


def sweep_stage(runner: PointRunner, levels: dict[str, GridPlan], store: Path, cfg: RunConfig,
                env: DistEnv, group: ShardGroup | None = None) -> list[Work]:
    """Every pending tile of the store, claimed rank by rank (shard group by shard group); returns the tiles this
    rank computed."""
    tiles = sweep_tiles(runner, levels, open_existing(store, "r+"), progress=cfg.eval.progress, env=env,
                        group=group)
    barrier()
    return tiles


def spectrum_stage(model: nn.Module, target: PerturbedTensors, batches: HessianBatches, cfg: RunConfig,
                   resolved: dict[str, Any], env: DistEnv, store: Path, say: Say, loss: Loss | None = None) -> None:
    """Spectra at theta* (and per block, with hessian.blocks) into the store's hessian/ group (all ranks compute,
    rank 0 writes); skipped when the store already holds a spectrum computed with the same hessian settings (a
    changed hessian.tolerance only re-judges the stored numbers)."""
    h, settings = cfg.hessian, resolved["hessian"]
    stored = stored_spectrum_config(store)
    if same_numbers(stored, settings):
        if hessian_settings(cast("dict[str, Any]", stored)) != hessian_settings(settings):
            on_main(env, lambda: set_tolerance(store, h.tolerance, settings))
            barrier()
        say("spectrum: already in the store with these hessian settings")
        return
    blocks = f", per {h.blocks} block" if isinstance(h.blocks, str) else \
        f", per block of {len(h.blocks)} patterns" if h.blocks else ""
    say(f"spectrum at theta*: top {h.top_k} eigenpairs, traces, SLQ density{blocks} of the "
        f"{'generalized Gauss-Newton matrix' if h.matrix == 'ggn' else 'Hessian'} ({env.world_size} rank(s))")
    spectrum = compute_spectrum(model, hessian_params(target.tensors), batches, h, env, loss or make_loss(cfg.loss),
                                progress=cfg.eval.progress and env.is_main)
    on_main(env, lambda: write_spectrum(store, spectrum, settings))
    barrier()
    flags = spectrum.numbers()["convergence"]
    if not flags["converged"]:
        names = list(flags["flagged"])
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        say(f"spectrum: {', '.join(names[:4])}{more} wider than hessian.tolerance={h.tolerance}; raise "
            f"{', '.join(flags['raise'])} (summary.json: spectrum.convergence)")


def sharpness_stage(model: nn.Module, split: AnySplit, cfg: RunConfig, env: DistEnv, store: Path, loss: Loss,
                    group: ShardGroup | None = None) -> None:
    """Keskar et al.'s epsilon-sharpness and the adaptive sharpness (worst case and average) at theta* into the
    store's attributes (summary.json reads them there); each is skipped when off or already in the store. On a
    sharded model (group) every rank of the group takes part and its leader writes."""
    whole = sum(p.numel() * p.element_size() for p in model.parameters())  # the whole model (a DTensor: its shape)
    with returning_freed_memory(whole):  # each step frees and makes again the model's size in pieces
        ascents(model, split, cfg, env, store, loss, group)


def ascents(model: nn.Module, split: AnySplit, cfg: RunConfig, env: DistEnv, store: Path, loss: Loss,
            group: ShardGroup | None = None) -> None:
    """The body of sharpness_stage."""
    s = cfg.summary
    samples = held(subsample(split, s.sharpness_samples, cfg.data.seed))
    count = len(samples)
    view: WholeView | None = None
    params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    size = sharpness_batch_size(model, samples, params, cfg, env, loss, group)
    if group is None:  # the loss summed over every batch, over the items (tokens, samples) summed
        mean_loss = BatchedLoss(model, device_batches(samples, size, env.device), loss)
    else:
        from engine.sweep.sharded_sharpness import ShardedView, group_mean_loss

        mean_loss, view = group_mean_loss(model, samples, group, loss, size), ShardedView(group)
    writes = group is None or group.leader
    show = cfg.eval.progress and env.is_main
    old = get_attribute(store, "epsilon_sharpness") if writes else None
    old = (group.broadcast(old) if group is not None else old) or {}
    if s.epsilon is not None and (old.get("epsilon"), old.get("steps"), old.get("samples")) != (
            s.epsilon, s.epsilon_steps, count):
        result = epsilon_sharpness(mean_loss, params, s.epsilon, s.epsilon_steps, seed=cfg.direction.seed,
                                   progress=show, view=view)
        if writes:
            set_attribute(store, "epsilon_sharpness", {**result, "samples": count})
    settings = {"radius": s.adaptive_radius, "norm": s.adaptive_norm, "steps": s.adaptive_steps,
                "average_radius": s.adaptive_average_radius, "samples": s.adaptive_samples, "eval_samples": count}
    old = get_attribute(store, "adaptive_sharpness") if writes else None
    old = (group.broadcast(old) if group is not None else old) or {}
    if s.adaptive_radius is not None and old.get("settings") != settings:
        adaptive = adaptive_sharpness(mean_loss, params, s.adaptive_radius, s.adaptive_norm, s.adaptive_steps,
                                      s.adaptive_average_radius, s.adaptive_samples, seed=cfg.direction.seed,
                                      progress=show, view=view)
        if writes:
            set_attribute(store, "adaptive_sharpness", {**adaptive, "eval_samples": count, "settings": settings})


def sharpness_batch_size(model: nn.Module, samples: Split, params: list[torch.Tensor], cfg: RunConfig,
                         env: DistEnv, loss: Loss, group: ShardGroup | None = None) -> int:
    """How many samples one gradient step of the ascents runs at a time: as many as one batch's autograd graph fits
    in eval.memory_gb beyond the model, theta*, the step and the gradient (measured; at most 256). A shard group
    measures on every rank (the forwards are collective) and takes the smallest."""
    held_bytes = 3 * sum(p.numel() * p.element_size() for p in params)  # the local rows, on a sharded model
    size = gradient_batch_size(model, lambda n: to_device(samples.batch(0, n), env.device), len(samples), loss,
                               cfg.eval.memory_gb * 2**30 - held_bytes)
    if group is not None:
        least = torch.tensor(size)
        torch.distributed.all_reduce(least, torch.distributed.ReduceOp.MIN, group=group.group)
        size = int(least)
    logging.getLogger("engine").info("sharpness: gradient batches of %d sample(s)", size)
    return size


def summary_stage(cfg: RunConfig, store: Path) -> dict[str, Any]:
    """summary.json of the store (rank 0): center, minimum, basins, sharpness, curvature and spectrum numbers."""
    return assemble(store, cfg.summary.basin_rise, run_dir_of(cfg) / "summary.json", cfg.summary.sharpness_radius)


def figures_stage(cfg: RunConfig, store: Path) -> list[Path]:
    """Every figure of the store into <run dir>/figures, the interactive page and <run dir>/report.html, and with
    plot.vtk the ParaView files into <run dir>/vtk (rank 0), unless plot.enabled is off."""
    if not cfg.plot.enabled:
        return []
    from engine.figures.draw import draw, draw_report  # matplotlib (0.6 s to import) only for runs that draw

    figures = draw(store, run_dir_of(cfg) / "figures", cfg.plot)
    if cfg.plot.vtk:
        from engine.figures.vtk import export_vtk

        figures += export_vtk(store, run_dir_of(cfg) / "vtk", log=cfg.plot.log_scale)
    if cfg.plot.html:
        figures.append(draw_report(store, run_dir_of(cfg), figures))
    return figures

"""The stages of one run, in order: data, model (trained or loaded), directions, store, sweep, summary, plots."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import directions as dirs
from engine.assemble import assemble
from engine.config import PlotConfig, RunConfig
from engine.data import DataBundle, device_batches, load_data, subsample
from engine.errors import UserError
from engine.grid import make_plan
from engine.models import build_model, load_checkpoint, state_fingerprint
from engine.perturb import Perturber
from engine.store import StoreSpec, open_store, read_surface
from engine.sweep import sweep_tiles
from engine.train import train_model


@dataclass
class RunResult:
    """Where a run put its outputs."""

    run_dir: Path
    store: Path
    summary: dict[str, Any]
    figures: list[Path]
    tiles_computed: list[tuple[int, ...]]


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; a CUDA device asked for on a machine without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"eval.device={name} but no CUDA device is visible; use eval.device=cpu or auto")
    return torch.device(name)


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


def prepare_model(cfg: RunConfig, data: DataBundle, device: torch.device, log: bool = True) -> nn.Module:
    """Build the model and give it its weights: the configured checkpoint, or train (and reuse) them."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    if cfg.model.checkpoint:
        load_checkpoint(model, cfg.model.checkpoint)
    else:
        train_model(model, data, cfg.train, run_dir_of(cfg) / "checkpoints", device, log=log)
    return model.to(device).eval()


def run_train(cfg: RunConfig) -> Path:
    """The train stage alone: per-epoch checkpoints and final.pt under <run dir>/checkpoints."""
    data = load_data(cfg.data)
    prepare_model(cfg, data, resolve_device(cfg.eval.device))
    return run_dir_of(cfg) / "checkpoints" / "final.pt"


def run_landscape(cfg: RunConfig, resolved: dict[str, Any], log: bool = True) -> RunResult:
    """Train or load, sweep the grid into the store (resuming), summarize and draw; returns the outputs."""
    start = time.perf_counter()
    run_dir = run_dir_of(cfg)
    plan = make_plan(cfg.grid)
    device = resolve_device(cfg.eval.device)
    data = load_data(cfg.data)
    model = prepare_model(cfg, data, device, log=log)
    named = dirs.perturbed_tensors(model, cfg.direction.over)
    names, tensors = [n for n, _ in named], [t for _, t in named]
    theta = [t.detach() for t in tensors]
    if cfg.direction.kind == "random":
        d = cfg.direction
        directions = dirs.random_directions(theta, plan.ndim, d.seed, d.norm, d.ignore)
    else:
        raw = dirs.load_directions(cfg.direction.path, names, theta, plan.ndim)
        directions = [dirs.normalize(d, theta, cfg.direction.norm, cfg.direction.ignore) for d in raw]
    split = subsample(data.test if cfg.eval.split == "test" else data.train, cfg.eval.samples, cfg.data.seed)
    batches = device_batches(split, cfg.eval.batch_size, device)
    store_path = Path(cfg.store.path) if cfg.store.path else run_dir / "landscape.zarr"
    spec = StoreSpec(resolved, plan, names, [tuple(t.shape) for t in tensors], directions, state_fingerprint(model))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    root = open_store(store_path, spec, overwrite=cfg.store.overwrite)
    if log:
        print(f"sweeping {'x'.join(map(str, plan.shape))} points of {cfg.model.name} on {len(split.y)} "
              f"{cfg.eval.split} samples ({device}) into {store_path}")
    tiles = sweep_tiles(model, batches, Perturber(tensors, directions), plan, root, progress=cfg.eval.progress)
    summary = assemble(store_path, cfg.summary.basin_rise, run_dir / "summary.json")
    figures = draw(store_path, run_dir / "figures", cfg.plot) if cfg.plot.enabled else []
    if log:
        print(f"computed {len(tiles)} tile(s) in {time.perf_counter() - start:.1f} s; "
              f"center loss {summary['center']['loss']}, accuracy {summary['center']['accuracy']}")
        print(f"store:   {store_path}\nsummary: {run_dir / 'summary.json'}\nfigures: {run_dir / 'figures'}")
    return RunResult(run_dir, store_path, summary, figures, tiles)


def draw(store_path: str | Path, out_dir: str | Path, plot: PlotConfig | None = None) -> list[Path]:
    """Draw every figure of a store into out_dir (redraws from the store alone, no recompute)."""
    from engine.plot import draw_surfaces

    plot = plot or PlotConfig()
    surface = read_surface(store_path)
    conf = surface.attrs["config"]
    title = f"{conf['model']['name']} on {conf['data']['name']} ({conf['direction']['norm']}-normalized)"
    if not bool(surface.done.all()):
        title += " [partial]"
    center = tuple(0.0 for _ in surface.coords)
    return draw_surfaces(surface.coords, surface.metrics, out_dir, title=title, log_scale=plot.log_scale,
                         clip=plot.clip, formats=list(plot.formats), markers={"theta*": center})

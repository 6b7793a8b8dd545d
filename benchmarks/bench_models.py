#!/usr/bin/env python
"""Run: python benchmarks/bench_models.py [--models resnet18 gpt2] [--resnet-grid 4] [--lm-grid 3] [--seed-points 3]
                                        [--repeats 1] [--floor-passes 2] [--threads T] [--set KEY=VALUE ...]

Milliseconds per grid point of the engine's loss-landscape sweep on two models people actually sweep, against two
baselines measured in the same run on the same model, data and batch size:

- resnet18: torchvision ResNet-18 (num_classes=10, seeded init) on 256 seeded random 3x32x32 images with labels,
  loss cross_entropy, batch size 128;
- gpt2: a transformers GPT-2 LM built from a config (4 layers x 256 wide, 4 heads, vocabulary 1000, seeded init,
  eager attention and no key/value cache, as the engine's model=hf loads one; nothing downloaded) on 64 seeded
  random sequences x 128 tokens, loss causal_lm (next-token cross-entropy), batch size 16.

Per model:

- engine: `engine.landscape(model, data, loss=..., **overrides)` (the Python API, the engine's whole code path:
  directions, store, K timing, sweep, summary) on an n x n grid with eval.batch_size fixed to the baselines'.
  "engine ms/pt" is the sweep's own time, read from the tile lines of <run_dir>/logs/rank0.log ("rank 0: full tile
  (0, 0) (16 points) in 3.21 s"), summed over tiles and divided by the points; "wall ms/pt" is the whole call's
  time (Hydra, fingerprints, directions, store, timing the batch size and K, summary) over the grid's points. The
  path and K the engine chose are read from the same log;
- seed loop: the source document's way of computing a surface, per point: copy.deepcopy(model), load_state_dict of
  theta* + a*d1 + b*d2 (state-dict arithmetic; a tied tensor, GPT-2's lm_head.weight, moves with the parameter it
  shares storage with), then a DataLoader pass under torch.no_grad() with .item() per batch, the mean loss. It runs
  on a few of the engine's grid points along the engine's own directions (read back from its store), so its losses
  are checked against the engine's store at those points;
- floor: the forward passes alone over the same pre-built batches at theta* under torch.inference_mode(), no loss,
  as ms per point: what no perturbation method can beat on this hardware. For images it is the faster of the
  contiguous and channels_last memory formats (the engine converts image models to channels_last).

Floor passes run before and after each engine run and the median is reported, so a shared machine's drift shows
in their spread; the load average is printed at the start and the end. Targets (from the issue): engine within
1.5x of the floor and faster than the seed loop, on both models. An engine failure is printed with its error and
the run exits 1 (the baselines are still measured).
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import engine
from engine.core.hostalloc import keep_freed_memory
from engine.directions.vectors import perturbed_tensors, random_directions
from engine.store.read import read_directions

Batch = Any
REL_TOL = 1e-3  # seed loop vs engine store loss at the same grid point (the engine folds BN, uses vmap, ...)
FLOOR_TARGET = 1.5  # the target: engine within 1.5x of the floor
DIRECTION_SEED = 123  # the engine's default direction.seed (used only when the engine fails, for the seed loop)
TILE_LINE = re.compile(r"rank 0: (\w+) tile \(([^)]*)\) \((\d+) points\) in ([\d.]+) s")
SWEEP_LINE = re.compile(r"rank 0 of \d+ \(pid \d+\): \d+ tile\(s\) pending, K=(\d+)")
NOTABLE = ("graph rewrites", "vectorized points", "points per pass", "ms per point", "eval batch size")


@dataclass
class Workload:
    """A model at theta*, its eval set in the engine's and the baselines' forms, and how a batch becomes a loss."""

    name: str
    title: str
    model: nn.Module
    engine_data: Any  # what engine.landscape is given
    loss: str  # the engine's loss name
    loader: DataLoader  # the seed loop's DataLoader (batch_size = the engine's eval.batch_size)
    forward: Callable[[nn.Module, Batch], torch.Tensor]  # logits of one loader batch
    summed_loss: Callable[[torch.Tensor, Batch], tuple[float, int]]  # the seed loop's summed loss and item count
    grid: int
    batch_size: int
    image: bool = False  # also time the floor in channels_last


@dataclass
class EngineRun:
    """One engine.landscape call: its wall time, its tiles from the rank log, the K it swept with, its surface."""

    wall_s: float
    tiles: list[tuple[str, int, float]]  # (level, points, seconds) per tile line of the log
    k: int | None
    notes: list[str]  # the log's lines on rewrites, vmap, K timing and batch size, timestamps stripped
    store: Path
    coords: tuple[np.ndarray, np.ndarray]
    loss: np.ndarray

    @property
    def points(self) -> int:
        return sum(p for _, p, _ in self.tiles)

    @property
    def sweep_s(self) -> float:
        return sum(s for _, _, s in self.tiles)

    @property
    def ms_per_point(self) -> float:
        return self.sweep_s * 1e3 / max(self.points, 1)

    def path(self) -> str:
        """The evaluation path the sweep used, in words."""
        if self.k is not None and self.k > 1:
            return f"vmap, K={self.k} points per pass"
        rewrites = next((n for n in self.notes if n.startswith("graph rewrites of")), None)
        why = next((n for n in self.notes if "unavailable" in n), "no rewrites logged")
        return f"in place, K=1, {rewrites.split(': ', 1)[1] if rewrites else why}"


@dataclass
class Measured:
    """Every timing of one workload, in ms per point."""

    floor: dict[str, list[float]] = field(default_factory=dict)  # memory format -> per-pass ms
    seed: list[float] = field(default_factory=list)
    engine: list[EngineRun] = field(default_factory=list)
    error: str | None = None
    checks: list[tuple[tuple[float, float], float, float]] = field(default_factory=list)  # coords, seed, engine


def resnet18_workload(args: argparse.Namespace) -> Workload:
    """torchvision ResNet-18 (10 classes) on seeded random CIFAR-shaped images, cross-entropy."""
    import torchvision

    torch.manual_seed(args.seed)
    model = torchvision.models.resnet18(num_classes=10).eval()
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)

    def summed(logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
        return F.cross_entropy(logits, batch[1], reduction="sum").item(), len(batch[1])

    return Workload(
        "resnet18", f"torchvision ResNet-18 (10 classes) on {args.images} random 3x32x32 images, cross_entropy",
        model, (x, y), "cross_entropy", DataLoader(TensorDataset(x, y), batch_size=args.resnet_batch),
        lambda m, batch: m(batch[0]), summed, args.resnet_grid, args.resnet_batch, image=True,
    )


def gpt2_workload(args: argparse.Namespace) -> Workload:
    """A GPT-2 LM from a config (seeded init, no download) on seeded random token sequences, next-token loss."""
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = args.vocab
    config = GPT2Config(vocab_size=vocab, n_positions=args.seq_len, n_embd=args.width, n_layer=args.layers,
                        n_head=args.heads, bos_token_id=vocab - 1, eos_token_id=vocab - 1, use_cache=False,
                        attn_implementation=args.attention)
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config).eval()
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.sequences, args.seq_len), generator=g)
    mask = torch.ones_like(ids)
    b = args.lm_batch
    batches = [{"input_ids": ids[i:i + b], "attention_mask": mask[i:i + b]} for i in range(0, len(ids), b)]

    def forward(m: nn.Module, batch: Batch) -> torch.Tensor:
        return m(input_ids=batch[0], attention_mask=batch[1]).logits

    def summed(logits: torch.Tensor, batch: Batch) -> tuple[float, int]:
        labels = batch[0][:, 1:]
        shifted = logits[:, :-1]
        loss = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels.reshape(-1), reduction="sum")
        return loss.item(), labels.numel()

    return Workload(
        "gpt2", f"GPT-2 LM {args.layers} layers x {args.width}, {args.heads} heads, vocab {vocab}, "
        f"{args.attention} attention, on {args.sequences} x {args.seq_len} random tokens, causal_lm",
        model, batches, "causal_lm", DataLoader(TensorDataset(ids, mask), batch_size=b),
        forward, summed, args.lm_grid, b,
    )


WORKLOADS: dict[str, Callable[[argparse.Namespace], Workload]] = {"resnet18": resnet18_workload,
                                                                   "gpt2": gpt2_workload}


class SeedLoop:
    """The source document's per-point method: deepcopy, state dict theta* + a*d1 + b*d2, load, DataLoader pass."""

    def __init__(self, w: Workload, directions: list[dict[str, torch.Tensor]]) -> None:
        self.w = w
        state = w.model.state_dict()
        by_storage = {p.data_ptr(): n for n, p in w.model.named_parameters()}  # a tied tensor once, first name
        owner = {k: by_storage.get(v.data_ptr()) for k, v in state.items()}
        self.theta = {k: v.detach().clone() for k, v in state.items()}
        self.dirs = [{k: d[n] for k, n in owner.items() if n in d} for d in directions]

    def point(self, a: float, b: float) -> float:
        """Mean loss at theta* + a d1 + b d2."""
        d1, d2 = self.dirs
        other = copy.deepcopy(self.w.model)
        other.load_state_dict({k: t + a * d1[k] + b * d2[k] if k in d1 else t for k, t in self.theta.items()})
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in self.w.loader:
                s, n = self.w.summed_loss(self.w.forward(other, batch), batch)
                total += s
                count += n
        return total / count


def floor_models(w: Workload) -> dict[str, tuple[nn.Module, list[Batch]]]:
    """The model and its batches (built once, not timed) per memory format the floor is timed in."""
    batches = list(w.loader)
    out = {"contiguous": (w.model, batches)}
    if w.image:
        cl = copy.deepcopy(w.model).to(memory_format=torch.channels_last)
        out["channels_last"] = (cl, [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches])
    return out


def floor_pass_ms(w: Workload, model: nn.Module, batches: list[Batch]) -> float:
    """One point's forward passes alone at theta*, in ms."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            w.forward(model, batch)
    return (time.perf_counter() - start) * 1e3


def run_engine(w: Workload, out_dir: Path, extra: dict[str, str], host_malloc: bool) -> EngineRun:
    """One engine.landscape call on a copy of the model (the engine changes its memory format) into out_dir."""
    overrides: dict[str, Any] = {
        "grid.resolution": (w.grid, w.grid), "eval.progress": False, "plot.enabled": False, "summary.epsilon": None,
        "out_dir": str(out_dir), "eval.batch_size": w.batch_size, "eval.host_malloc": host_malloc, **extra,
    }
    model = copy.deepcopy(w.model)
    start = time.perf_counter()
    ds = engine.landscape(model, w.engine_data, loss=w.loss, **overrides)
    wall = time.perf_counter() - start
    text = (Path(ds.attrs["run_dir"]) / "logs" / "rank0.log").read_text()
    tiles = [(m[1], int(m[3]), float(m[4])) for m in TILE_LINE.finditer(text)]
    ks = [int(m[1]) for m in SWEEP_LINE.finditer(text)]
    notes = [line.split(" ", 3)[3] for line in text.splitlines()
             if line.count(" ") >= 3 and any(s in line for s in NOTABLE)]
    return EngineRun(wall, tiles, ks[-1] if ks else None, notes, Path(ds.attrs["store"]),
                     (np.asarray(ds["x"]), np.asarray(ds["y"])), np.asarray(ds["loss"]))


def failure(err: BaseException) -> str:
    """The error in one line, with the innermost frame it was raised in."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}{where}"


def seed_points(n: int, count: int) -> list[tuple[int, int]]:
    """count grid indices spread over the n x n grid in row-major order (corner, ..., centre, ..., corner)."""
    flat = np.unique(np.linspace(0, n * n - 1, max(1, min(count, n * n))).round().astype(int))
    return [(int(i) // n, int(i) % n) for i in flat]


def fallback_directions(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """Seeded filter-normalized directions over the weights, like the engine's default, for timing the seed loop
    when the engine failed before writing its store."""
    named = perturbed_tensors(model, "weights")
    dirs = random_directions([t.detach() for _, t in named], 2, DIRECTION_SEED, "filter", "biasbn")
    return [dict(zip([n for n, _ in named], d)) for d in dirs]


def measure(w: Workload, args: argparse.Namespace, extra: dict[str, str], host_malloc: bool) -> Measured:
    """Floor before and after each engine run, the engine, and the seed loop on a few of the engine's points."""
    m = Measured()
    floors = floor_models(w)
    for key, (model, batches) in floors.items():
        floor_pass_ms(w, model, batches)  # warm-up: allocations, oneDNN primitives
        m.floor[key] = []

    def floor_round() -> None:
        for _ in range(args.floor_passes):
            for key, (model, batches) in floors.items():
                m.floor[key].append(floor_pass_ms(w, model, batches))

    with tempfile.TemporaryDirectory(prefix="bench_models_") as tmp:
        for r in range(args.repeats):
            floor_round()
            try:
                m.engine.append(run_engine(w, Path(tmp) / f"run{r}", extra, host_malloc))
            except Exception as err:
                m.error = failure(err)
                print(f"  ENGINE FAILED on {w.name}: {m.error}", flush=True)
            run = m.engine[-1] if m.engine else None
            directions = read_directions(run.store) if run else fallback_directions(w.model)
            seed = SeedLoop(w, directions)
            coords = run.coords if run else (np.linspace(-1, 1, w.grid), np.linspace(-1, 1, w.grid))
            for i, j in seed_points(w.grid, args.seed_points):
                a, b = float(coords[0][i]), float(coords[1][j])
                start = time.perf_counter()
                got = seed.point(a, b)
                m.seed.append((time.perf_counter() - start) * 1e3)
                if run:
                    m.checks.append(((a, b), got, float(run.loss[i, j])))
            floor_round()
            if m.error:
                break
    return m


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(w: Workload, m: Measured) -> dict[str, float | None]:
    """Print one workload's details; returns its row of the summary table."""
    floor_by = {k: statistics.median(v) for k, v in m.floor.items()}
    floor_key = min(floor_by, key=lambda k: floor_by[k])
    floor = floor_by[floor_key]
    seed = statistics.median(m.seed)
    print(f"\n== {w.name}: {w.title} ==")
    print(f"batch size {w.batch_size} ({len(w.loader)} batches per point) for the engine, the seed loop and the floor")
    spread = ", ".join(f"{k} median {floor_by[k]:.1f} (min {min(v):.1f}, max {max(v):.1f}, {len(v)} passes)"
                       for k, v in m.floor.items())
    print(f"floor ms/pt: {spread}; floor = {floor_key}")
    print(f"seed loop ms/pt: median {seed:.1f} over {len(m.seed)} point(s) (min {min(m.seed):.1f}, "
          f"max {max(m.seed):.1f})")
    row: dict[str, float | None] = {"seed": seed, "floor": floor, "engine": None, "wall": None}
    if m.error:
        print(f"engine: FAILED: {m.error}")
    for r, run in enumerate(m.engine):
        print(f"engine run {r}: {w.grid}x{w.grid} grid, path: {run.path()}; sweep {run.sweep_s:.2f} s over "
              f"{run.points} points in {len(run.tiles)} tile(s) = {run.ms_per_point:.1f} ms/pt; wall "
              f"{run.wall_s:.1f} s (setup and tuning {run.wall_s - run.sweep_s:.1f} s)")
        for note in run.notes:
            print(f"  log: {note}")
    if m.engine:
        row["engine"] = statistics.median(r.ms_per_point for r in m.engine)
        row["wall"] = statistics.median(r.wall_s * 1e3 / max(r.points, 1) for r in m.engine)
    if m.checks:
        worst = max(abs(s - e) / max(abs(s), 1e-12) for _, s, e in m.checks)
        shown = "; ".join(f"({a:+.2f}, {b:+.2f}) seed {s:.5g} engine {e:.5g}" for (a, b), s, e in m.checks)
        verdict = "ok" if worst <= REL_TOL else f"MISMATCH (tolerance {REL_TOL:g})"
        print(f"check: seed loop vs engine store loss at {len(m.checks)} point(s): max rel diff {worst:.1e} "
              f"{verdict}: {shown}")
        row["mismatch"] = float(worst > REL_TOL)
    return row


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """--set KEY=VALUE pairs as engine.landscape overrides (values as Hydra reads them)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: give KEY=VALUE, e.g. --set eval.points_per_pass=1")
        out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, measure every chosen model, print the table and the targets."""
    parser = argparse.ArgumentParser(description="ms per grid point: seed loop vs engine.landscape vs forward floor")
    parser.add_argument("--models", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--resnet-grid", type=int, default=4, help="ResNet-18 grid is N x N (default 4)")
    parser.add_argument("--lm-grid", type=int, default=3, help="GPT-2 grid is N x N (default 3)")
    parser.add_argument("--seed-points", type=int, default=3, help="grid points the seed loop is timed on")
    parser.add_argument("--repeats", type=int, default=1, help="engine runs per model (fresh store each; median)")
    parser.add_argument("--floor-passes", type=int, default=2, help="floor passes before and after each engine run")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--resnet-batch", type=int, default=128)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lm-batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--attention", choices=["eager", "sdpa"], default="eager",
                        help="GPT-2 attention (eager: as the engine's model=hf loads it, vmap-able)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--host-malloc", choices=["on", "off"], default="on",
                        help="engine.core.hostalloc.keep_freed_memory for the whole process and the engine's "
                             "eval.host_malloc (on: as a CPU run does; the baselines get it too)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra engine.landscape override, e.g. --set eval.points_per_pass=1 (repeatable)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    host_malloc = args.host_malloc == "on"
    malloc = host_malloc and keep_freed_memory()
    extra = parse_sets(args.sets)
    start = time.perf_counter()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()}, glibc freed-memory "
          f"reuse {'on' if malloc else 'off'}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (f", engine overrides {extra}" if extra else ""))
    rows: dict[str, dict[str, float | None]] = {}
    failed = False
    for name in args.models:
        w = WORKLOADS[name](args)
        print(f"measuring {name} ...", flush=True)
        m = measure(w, args, extra, host_malloc)
        rows[name] = report(w, m)
        failed = failed or m.error is not None or bool(rows[name].get("mismatch"))

    print("\nms per grid point (engine: the sweep's tile time from its log; wall: the whole engine.landscape call)")
    head = (f"{'model':<10}{'seed loop':>11}{'engine':>9}{'floor':>9}{'engine/floor':>14}{'seed/engine':>13}"
            f"{'engine wall':>13}")
    print(head)
    for name, r in rows.items():
        engine_ms, floor, seed = r["engine"], r["floor"], r["seed"]
        ratio_floor = engine_ms / floor if engine_ms is not None and floor else None
        ratio_seed = seed / engine_ms if engine_ms and seed is not None else None
        print(f"{name:<10}{fmt(seed):>11}{fmt(engine_ms) if engine_ms is not None else 'FAILED':>9}{fmt(floor):>9}"
              f"{fmt(ratio_floor, '.2f') + 'x':>14}{fmt(ratio_seed, '.2f') + 'x':>13}{fmt(r['wall']):>13}")
    print(f"targets (issue): engine within {FLOOR_TARGET}x of the floor and faster than the seed loop, on both models")
    for name, r in rows.items():
        engine_ms, floor, seed = r["engine"], r["floor"], r["seed"]
        if engine_ms is None or floor is None or seed is None:
            print(f"  {name}: engine FAILED, targets not measured")
            continue
        near = engine_ms <= FLOOR_TARGET * floor
        faster = engine_ms < seed
        print(f"  {name}: within {FLOOR_TARGET}x of floor: {'PASS' if near else 'FAIL'} ({engine_ms / floor:.2f}x); "
              f"faster than seed loop: {'PASS' if faster else 'FAIL'} ({seed / engine_ms:.2f}x)")
    load = os.getloadavg()
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

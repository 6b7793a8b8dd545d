#!/usr/bin/env python
"""python benchmarks/bench_sweep.py [--workload mlp|resnet20|all] [--points N] [--repeats R] [--threads T] [--no-naive]

Milliseconds per grid point of a loss-landscape sweep, measured in one process on the same model, data
and grid points:

- naive: the seed document's method; per point copy.deepcopy(model), a new state dict
  theta* + a*d1 + b*d2 over every state_dict entry, load_state_dict, then a DataLoader pass under
  torch.no_grad() with .item() per batch;
- loss-landscapes (MLP only; the `bench` extra): the loss-landscapes package's
  random_plane(model, Loss(cross_entropy, x, y), distance, steps=21, normalization="filter", deepcopy_model=True), the
  whole 21 x 21 plane per call, all samples as one batch (what the engine's MLP batch is). Per point it adds a
  direction to the live parameters in place (a Python loop over tensors), runs the forward (parameters do not require
  grad) and reads the mean loss with .item(): no accuracy, no float64 sums, no standard errors, no store. Its
  ms/point is the call's time (setup, directions included) / 441;
- engine in place: engine.sweep.perturb.Perturber.set + engine.sources.losses.evaluate over device batches built
  once (what engine.sweep.tiles.sweep_tiles does per point, without the store), at the engine's batch size
  and, where it differs, also at the naive loader's batch size (to separate method from batch size);
- engine K=1 rewritten: the same on engine.sweep.rewrite's model (eval BatchNorm folded into the conv before it,
  ReLU and residual adds in place, the input layer's products with theta* and each direction cached);
- engine vmap K: K points per forward pass (engine.sweep.vectorized: torch.vmap over the whole model);
- engine stacked K: K points per pass over the traced graph (engine.sweep.stacked: each Linear one batched matmul,
  the input layer from its cached products, other nodes under vmap);
- engine sweep_tiles: one full engine.sweep.tiles.sweep_tiles run of the whole grid into a fresh Zarr store
  (engine.store.layout.open_store; store creation itself is not timed, tile writes are);
- dense floor: the DENSE forward's FLOPs of one point (FlopCounterMode over the unrewritten model: every layer's
  matmuls and convolutions) / the fp32 torch.mm rate measured in this run. It is the floor of the in-place and
  vmap paths, which compute every layer at every point;
- rewritten floor: the FLOPs FlopCounterMode counts on one point of the K=1 rewritten path itself (the dense
  FLOPs minus the cached input layer's, about a third of the MLP's; the ResNet's first conv is followed by a
  BatchNorm, so it is folded, not cached, and both floors are equal there) / the same rate. The rewritten path
  skips the cached layer's matmul, so its ratio to the dense floor is not a ratio to its own work: both ratios
  are printed. Neither floor counts elementwise work (the cached layer's axpys, ReLU, BatchNorm, the loss).

Naive and the engine variants run on the same points, each back to back over them, alternating rounds; loss-landscapes
runs its whole plane once in each of the same rounds, and its ratio to the engine's sweep_tiles (whose runs follow the
rounds) is printed.
Engine (both batch sizes) and the sweep_tiles store are checked against naive at a few grid points.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from engine.config.schema import GridConfig
from engine.core.hostalloc import keep_freed_memory
from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.batches import device_batches
from engine.sources.checkpoints import state_fingerprint
from engine.sources.data import Split, synthetic_images
from engine.sources.losses import Batches, evaluate
from engine.sources.models import MLP, CifarResNet
from engine.store.grid import GridPlan, make_plan
from engine.store.layout import StoreSpec, open_store
from engine.store.read import read_surface
from engine.sweep.perturb import Perturber
from engine.sweep.rewrite import rewrite
from engine.sweep.stacked import make_stacked
from engine.sweep.tiles import sweep_tiles
from engine.sweep.vectorized import PointRunner, make_evaluator

Point = tuple[float, float]
DIRECTION_SEED = 0
REL_TOL = 1e-4
SWEEP_REPEAT_BUDGET_S = 5.0


@dataclass
class Workload:
    """A model, its evaluation data, the grid and the batch sizes each method uses."""

    name: str
    title: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    resolution: int
    engine_batch: int
    naive_batch: int
    default_points: int
    ks: tuple[int, ...]  # points per vmap pass to time
    loss_landscapes: bool = False  # also time the loss-landscapes package's random_plane on the whole grid
    channels_last_batch: int | None = None  # also time the K=1 path in channels_last at this batch size


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits as (N, 1, 8, 8) float32 images in [0, 1] and long labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(bunch.target, dtype=torch.long)


WORKLOADS = {
    "mlp": Workload(
        "mlp", "MLP 64-128-128-10 on 1797 digits", lambda: MLP(64, [128, 128], 10), digits, 21, 1797, 128, 441,
        (8, 16, 32), loss_landscapes=True,
    ),
    "resnet20": Workload(
        "resnet20",
        "CifarResNet(20, 10, 3, 16, shortcut=True) on 256 synthetic 3x32x32 images",
        lambda: CifarResNet(20, 10, 3, 16, shortcut=True),
        lambda: synthetic_images((3, 32, 32), 256, 10, 0),
        7,
        256,
        128,
        10,
        (2, 4),
        channels_last_batch=64,
    ),
}


class Naive:
    """The seed's per-point method: deepcopy, full state dict theta* + a*d1 + b*d2, load, DataLoader pass."""

    def __init__(self, model: nn.Module, names: list[str], directions: list[list[torch.Tensor]],
                 loader: DataLoader) -> None:
        self.model = model
        self.theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.dirs: list[dict[str, torch.Tensor]] = []
        for direction in directions:
            by_name = dict(zip(names, direction))
            self.dirs.append({k: by_name[k].detach().clone() if k in by_name else torch.zeros_like(v)
                              for k, v in self.theta.items()})
        self.loader = loader

    def point(self, coords: Point) -> dict[str, float]:
        """Mean loss and accuracy at theta* + coords[0] d1 + coords[1] d2."""
        a, b = coords
        d1, d2 = self.dirs
        other = copy.deepcopy(self.model)
        other.load_state_dict({k: t + a * d1[k] + b * d2[k] for k, t in self.theta.items()})
        loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in self.loader:
                out = other(x)
                loss += F.cross_entropy(out, y).item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                count += len(y)
        return {"loss": loss / count, "accuracy": correct / count}


def loss_landscapes_plane(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Seconds of one loss-landscapes random_plane over steps x steps points (directions and model copy included)."""
    from loss_landscapes import random_plane  # the bench extra: pip install -e .[bench]
    from loss_landscapes.metrics import Loss

    metric = Loss(nn.CrossEntropyLoss(), x, y)
    start = time.perf_counter()
    random_plane(model, metric, distance=1, steps=steps, normalization="filter", deepcopy_model=True)
    return time.perf_counter() - start


def engine_points(model: nn.Module, batches: Batches, perturber: Perturber,
                  points: Sequence[Point]) -> list[dict[str, float]]:
    """The engine's K=1 path per point: set the live tensors in place, evaluate; theta* restored after."""
    with perturber.active():
        out = []
        for coords in points:
            perturber.set(coords)
            out.append(evaluate(model, batches))
    return out


def rewritten_runner(model: nn.Module, names: list[str], perturber: Perturber, directions: list[list[torch.Tensor]],
                     batches: list[tuple[torch.Tensor, torch.Tensor]]) -> PointRunner:
    """The K = 1 path on engine.sweep.rewrite's model: BN folded, ReLU/add in place, input-layer products cached."""
    fast = rewrite(model, names, perturber.theta, directions, batches[0][0][:8])
    assert fast is not None, "graph rewrites unavailable"
    fast.register([x for x, _ in batches])
    return PointRunner(model, perturber, batches, fast=fast)


def round_ms(naive: Naive | None, model: nn.Module, perturber: Perturber, engine_batches: dict[str, Batches],
             points: Sequence[Point], runners: dict[str, PointRunner],
             plane: Callable[[], float] | None = None, plane_points: int = 1) -> dict[str, float]:
    """One round: naive over all points (unless None), loss-landscapes' plane (if given), then each engine variant
    over the same points; ms/point each."""
    out = {}
    if naive is not None:
        start = time.perf_counter()
        for coords in points:
            naive.point(coords)
        out["naive"] = (time.perf_counter() - start) * 1e3 / len(points)
    if plane is not None:
        out["loss-landscapes"] = plane() * 1e3 / plane_points
    for key, batches in engine_batches.items():
        start = time.perf_counter()
        engine_points(model, batches, perturber, points)
        out[key] = (time.perf_counter() - start) * 1e3 / len(points)
    for key, runner in runners.items():
        start = time.perf_counter()
        runner.run(np.array(points))
        out[key] = (time.perf_counter() - start) * 1e3 / len(points)
    return out


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 torch.mm rate in FLOP/s on n x n matrices."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def point_flops(model: nn.Module, batches: Batches) -> int:
    """Forward FLOPs of one evaluation pass over the eval data, as counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        evaluate(model, batches)
    return int(counter.get_total_flops())


def rewritten_flops(runner: PointRunner, coords: Point) -> int:
    """FLOPs FlopCounterMode counts on one point of a K=1 rewritten runner (its input-layer products already
    cached), so without the cached layer's matmul; the live tensors are restored to theta* afterwards."""
    with FlopCounterMode(display=False) as counter:
        runner.run(np.array([coords]))
    runner.perturber.restore()
    return int(counter.get_total_flops())


def pick_points(plan: GridPlan, n: int) -> list[Point]:
    """n grid points spread evenly over the grid in row-major order (all of them if n >= the grid size)."""
    grid = [(float(a), float(b)) for a in plan.coords[0] for b in plan.coords[1]]
    if n >= len(grid):
        return grid
    return [grid[i] for i in np.unique(np.linspace(0, len(grid) - 1, n).round().astype(int))]


def timed_sweep(runner: PointRunner, plan: GridPlan, spec: StoreSpec, path: Path) -> float:
    """Seconds of one full sweep_tiles run into a freshly created store at path (creation not timed)."""
    root = open_store(path, spec, overwrite=True)
    start = time.perf_counter()
    sweep_tiles(runner, plan, root, progress=False)
    return time.perf_counter() - start


def check_close(got: dict[str, float], want: dict[str, float], count: int, what: str) -> float:
    """Assert loss within REL_TOL relative and at most one flipped prediction; returns the relative diff."""
    rel = abs(got["loss"] - want["loss"]) / abs(want["loss"])
    assert rel <= REL_TOL, f"{what}: loss {got['loss']} vs naive {want['loss']}"
    assert abs(got["accuracy"] - want["accuracy"]) * count <= 1.5, f"{what}: {got} vs naive {want}"
    return rel


def run_workload(w: Workload, n_points: int | None, repeats: int, rate: float, time_naive: bool = True) -> None:
    """Set up one workload, verify, time every method and print its table."""
    ks = w.ks
    torch.manual_seed(0)
    model = w.make_model().eval()
    x, y = w.make_data()
    named = perturbed_tensors(model, "weights")
    names, tensors = [n for n, _ in named], [t for _, t in named]
    directions = random_directions([t.detach() for t in tensors], 2, DIRECTION_SEED, "filter", "biasbn")
    cpu = torch.device("cpu")
    batches = device_batches(Split(x, y), w.engine_batch, cpu)
    engine_batches = {"engine": batches}
    if w.naive_batch != w.engine_batch:
        engine_batches["engine_naive_batch"] = device_batches(Split(x, y), w.naive_batch, cpu)
    loader = DataLoader(TensorDataset(x, y), batch_size=w.naive_batch, shuffle=False)
    naive = Naive(copy.deepcopy(model), names, directions, loader)
    perturber = Perturber(tensors, directions)
    plan = make_plan(GridConfig(resolution=[w.resolution, w.resolution]))
    points = pick_points(plan, n_points or w.default_points)
    n = w.resolution
    check_idx = [(0, 0), (n // 2, n // 2), (n // 3, 2 * n // 3), (n - 1, n - 1)]
    check = [(float(plan.coords[0][i]), float(plan.coords[1][j])) for i, j in check_idx]
    want = [naive.point(coords) for coords in check]
    worst = 0.0
    for key, eb in engine_batches.items():
        for coords, got, ref in zip(check, engine_points(model, eb, perturber, check), want):
            worst = max(worst, check_close(got, ref, len(y), f"{key} at {coords}"))

    theta = [t.detach() for t in tensors]
    evaluator = make_evaluator(model, names, theta, directions, batches)
    assert evaluator is not None, "vmap path unavailable"
    runners = {f"vmap K={k}": PointRunner(model, perturber, batches, "fp32", evaluator, k)
               for k in ks if k <= len(points)}
    stacked = make_stacked(model, names, theta, directions, batches)
    assert stacked is not None, "stacked graph unavailable"
    runners |= {f"stacked K={k}": PointRunner(model, perturber, batches, "fp32", stacked, k)
                for k in ks if k <= len(points)}
    runners["K=1 rewritten"] = rewritten_runner(model, names, perturber, directions, batches)
    if w.channels_last_batch:
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        cl_x = x.contiguous(memory_format=torch.channels_last)
        cl_tensors = [t for _, t in perturbed_tensors(cl_model, "weights")]
        cl_batches = device_batches(Split(cl_x, y), w.channels_last_batch, cpu)
        cl_perturber = Perturber(cl_tensors, directions)
        runners[f"channels_last B={w.channels_last_batch} K=1"] = PointRunner(cl_model, cl_perturber, cl_batches)
        runners[f"channels_last B={w.channels_last_batch} K=1 rewritten"] = rewritten_runner(
            cl_model, names, cl_perturber, directions, cl_batches)
    for key, runner in runners.items():
        for coords, ref in zip(check, want):
            got = {m: float(v[0]) for m, v in runner.run(np.array([coords] * runner.k)).items()}
            runner.perturber.restore()
            worst = max(worst, check_close(got, ref, len(y), f"{key} at {coords}"))
    ll_model = copy.deepcopy(model)  # at theta*: the runners below leave the live model at their last point
    plane = (lambda: loss_landscapes_plane(ll_model, x, y, w.resolution)) if w.loss_landscapes else None
    timed_naive = naive if time_naive else None
    round_ms(timed_naive, model, perturber, engine_batches, points[: max(2, *(r.k for r in runners.values()))],
             runners, plane, w.resolution**2)
    runs = [round_ms(timed_naive, model, perturber, engine_batches, points, runners, plane, w.resolution**2)
            for _ in range(repeats)]
    ms = {key: [r[key] for r in runs] for key in runs[0]}
    best_key = min(runners, key=lambda key: statistics.median(ms[key]))
    best_faster = statistics.median(ms[best_key]) < statistics.median(ms["engine"])
    best = runners[best_key] if best_faster else PointRunner(model, perturber, batches)
    best_name = best_key if best_faster else f"K=1, B={w.engine_batch}"

    spec = StoreSpec({"benchmark": {"workload": w.name}}, {"": plan}, names, [tuple(t.shape) for t in tensors],
                     directions, state_fingerprint(model))
    warm_plan = GridPlan((np.zeros(1), np.zeros(1)), (1, 1))
    warm_spec = StoreSpec({"benchmark": {"warmup": w.name}}, {"": warm_plan}, names, spec.shapes, directions,
                          spec.fingerprint)
    sweep_s: list[float] = []
    plane_ms: list[float] = []  # loss-landscapes' plane, each run right before one sweep_tiles run (paired)
    with tempfile.TemporaryDirectory() as tmp:
        timed_sweep(best, warm_plan, warm_spec, Path(tmp) / "warmup.zarr")
        while len(sweep_s) < repeats and (not sweep_s or sum(sweep_s) < SWEEP_REPEAT_BUDGET_S):
            if plane is not None:
                plane_ms.append(plane() * 1e3 / w.resolution**2)
            sweep_s.append(timed_sweep(best, plan, spec, Path(tmp) / "sweep.zarr"))
        surface = read_surface(Path(tmp) / "sweep.zarr")
    for (i, j), coords, ref in zip(check_idx, check, want):
        got = {m: float(surface.metrics[m][i, j]) for m in ("loss", "accuracy")}
        worst = max(worst, check_close(got, ref, len(y), f"sweep_tiles store at {coords}"))
    total = int(np.prod(plan.shape))
    ms["sweep"] = [s * 1e3 / total for s in sweep_s]
    if plane_ms:
        ms["loss-landscapes"] += plane_ms

    flops = point_flops(model, batches)
    floor_ms = flops / rate * 1e3
    own_flops = rewritten_flops(runners["K=1 rewritten"], check[1])
    own_floor_ms = own_flops / rate * 1e3

    def floor_of(key: str) -> tuple[str, float]:
        """The floor a method's own work is bounded by: the rewritten one for rewritten runners, else dense."""
        return ("rewritten", own_floor_ms) if "rewritten" in key else ("dense", floor_ms)

    med = {key: statistics.median(v) for key, v in ms.items()}
    grid = f"{w.resolution}x{w.resolution}"
    print(f"\n== {w.name}: {w.title}, {grid} grid over [-1,1]^2, threads={torch.get_num_threads()} ==")
    print(f"batch size: naive DataLoader {w.naive_batch} ({len(loader)} batches/point), "
          f"engine {w.engine_batch} ({len(batches)} batch(es)/point)")
    print(f"verified: engine in place and sweep_tiles store vs naive at {len(check)} grid points, "
          f"max loss rel diff {worst:.1e} (tol {REL_TOL:g})")
    timed_naive_text = "naive and engine" if time_naive else "engine (naive not timed)"
    print(f"timed: {timed_naive_text} on the same {len(points)} of {total} points, back to back per method, "
          f"methods alternating over {repeats} rounds, median;")
    print(f"       sweep_tiles on all {total} points ({plan.tile_grid[0] * plan.tile_grid[1]} tile(s) of "
          f"{plan.tile[0]}x{plan.tile[1]}), median of {len(sweep_s)} run(s)")
    if plane_ms:
        print(f"       loss-landscapes random_plane on all {total} points, once per round and once before each "
              f"sweep_tiles run, median of {len(ms['loss-landscapes'])}")
    rows = []
    if "naive" in med:
        rows.append(("naive (deepcopy + load_state_dict + DataLoader)", med["naive"], min(ms["naive"])))
    if "loss-landscapes" in med:
        rows.append(("loss-landscapes random_plane(normalization='filter'), one batch", med["loss-landscapes"],
                     min(ms["loss-landscapes"])))
    rows += [
        (f"engine in place (Perturber.set + evaluate), B={w.engine_batch}", med["engine"], min(ms["engine"])),
    ]
    if "engine_naive_batch" in med:
        rows.append((f"  same, at the naive batch size B={w.naive_batch}", med["engine_naive_batch"],
                     min(ms["engine_naive_batch"])))
    rows += [(f"engine {key}" + ("" if "B=" in key else f", B={w.engine_batch}"), med[key], min(ms[key]))
             for key in runners]
    rows += [
        (f"engine sweep_tiles (with Zarr store, {best_name})", med["sweep"], min(ms["sweep"])),
        (f"floor: dense forward FLOPs / torch.mm rate ({flops / 1e6:.1f} MFLOP/pt @ {rate / 1e9:.1f} GFLOP/s)",
         floor_ms, floor_ms),
        (f"floor: rewritten path's FLOPs (dense minus cached input layer) / torch.mm rate "
         f"({own_flops / 1e6:.1f} MFLOP/pt)", own_floor_ms, own_floor_ms),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  {'ms/point':>10}  {'best':>10}")
    for label, median, best in rows:
        print(f"{label:<{width}}  {median:>10.3f}  {best:>10.3f}")
    naive, engine, sweep = med.get("naive", 0.0), med["engine"], med["sweep"]
    fastest_key = best_key if med[best_key] < engine else "K=1"
    fastest = min(engine, med[best_key])
    fastest_floor, fastest_floor_ms = floor_of(fastest_key)
    rewritten = med["K=1 rewritten"]
    if plane_ms:
        paired = statistics.median(s / p for s, p in zip(ms["sweep"], plane_ms))
        ll = med["loss-landscapes"]
        print(f"vs loss-landscapes: engine sweep_tiles/LL {paired:.2f}x (paired runs), best engine "
              f"({fastest_key})/LL {fastest / ll:.2f}x, LL/dense floor {ll / floor_ms:.2f}x")
    naive_ratios = (f"naive/engine {naive / engine:.2f}x, naive/dense floor {naive / floor_ms:.2f}x, "
                    f"naive/best {naive / fastest:.2f}x, ") if "naive" in med else ""
    print(f"ratios: {naive_ratios}engine K=1/dense floor {engine / floor_ms:.2f}x, "
          f"sweep_tiles/best {sweep / fastest:.2f}x")
    print(f"        K=1 rewritten/dense floor {rewritten / floor_ms:.2f}x, "
          f"K=1 rewritten/rewritten floor (its own work) {rewritten / own_floor_ms:.2f}x")
    own = f", best engine/rewritten floor (its own work) {fastest / fastest_floor_ms:.2f}x"
    print(f"        best engine ({fastest_key})/dense floor {fastest / floor_ms:.2f}x"
          + (own if fastest_floor == "rewritten" else ""))
    if "engine_naive_batch" in med and "naive" in med:
        print(f"        naive/engine at equal batch size {naive / med['engine_naive_batch']:.2f}x")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, measure the matmul rate once, then run each chosen workload."""
    parser = argparse.ArgumentParser(description="ms per grid point: naive vs engine vs FLOP floors")
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--points", type=int, default=None,
                        help="grid points timed per repeat, naive and engine (default: mlp 441, resnet20 10)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--host-malloc", choices=["on", "off"], default="on",
                        help="engine.core.hostalloc.keep_freed_memory for the whole process, as a CPU run does (it "
                             "then also speeds up the naive loop and the matmul rate: the ratios stay fair)")
    parser.add_argument("--no-naive", action="store_true",
                        help="do not time the naive loop (still run at the check points to verify the engine)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    malloc = args.host_malloc == "on" and keep_freed_memory()
    rate = matmul_rate()
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, glibc freed-memory reuse "
          f"{'on' if malloc else 'off'}, fp32 torch.mm 2048x2048 best of 5: {rate / 1e9:.1f} GFLOP/s")
    for name in WORKLOADS if args.workload == "all" else [args.workload]:
        run_workload(WORKLOADS[name], args.points, args.repeats, rate, not args.no_naive)


if __name__ == "__main__":
    main()

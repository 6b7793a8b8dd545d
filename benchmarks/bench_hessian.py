#!/usr/bin/env python
"""python benchmarks/bench_hessian.py [--workload mlp|resnet|all] [--repeats R] [--threads T]

engine.curvature.hessian against PyHessian 0.1 (Yao et al. 2020; `pip install --no-deps pyhessian==0.1`, a
benchmark-only comparison, not a dependency of the engine), in one process, on the same model, data and loss:

- top eigenvalue: PyHessian's power iteration `.eigenvalues(top_n=1, maxIter=100, tol=1e-3)` vs
  engine.curvature.hessian.top_eigenpairs(op, k=1, rtol=1e-5) (Lanczos stopped on its residual bound, as in runs);
- trace: PyHessian's Hutchinson `.trace(maxIter=100, tol=1e-3)` (the mean of the per-probe estimates it returns;
  it stops early once the running mean moves by less than tol relative) vs hutchinson_trace(op, samples=100)
  and hutchpp_trace(op, matvecs=99);
- density: PyHessian's SLQ `.density(iter=50, n_v=1)` vs slq_density(op, runs=1, steps=50), compared through
  what both return, the quadrature nodes and weights: m1 = sum_j w_j l_j estimates tr(H)/n and
  m2 = sum_j w_j l_j^2 estimates tr(H^2)/n (the Gaussian broadening and normalization of the plotted density
  differ between the tools and are not compared).

Both tools see the Hessian of the mean cross-entropy over ONE batch holding all samples, model in eval mode
(PyHessian's `hessian(model, criterion, data=(x, y))` calls model.eval() itself;
engine.curvature.hessian.HessianOperator gets the same single batch with its default summed loss divided by the count).

Every timed call, of either tool, starts from the model and the batch alone. A PyHessian time includes building
its `hessian` object (one forward and backward with create_graph, whose graph it then reuses for every
Hessian-vector product); an engine time includes building a new HessianOperator, whose first product runs the
same forward and graph-building backward, and which keeps that graph for the rest of the call (keep_graph=True,
its default in runs: hessian.keep_graph). Building inside each timed call, rather than timing both warm, is the
fair choice here: each row is one quantity from scratch, what a user asking for that quantity pays with either
tool; the graph build is a real part of each tool's cost and differs between them (PyHessian's mean loss
backward into .grad fields, the engine's summed loss through torch.autograd.grad), so timing warm would hide
it; and timing PyHessian warm would mean reaching around its constructor. (A run's engine.curvature.spectra shares one
operator across all its quantities, as one reused PyHessian object would; the per-row build then happens once.)
Before any timing, one product through each tool, on an operator and an object that are then discarded, takes
first-call costs (allocator, kernel choice) out of both. Each quantity is run
R times (default 3), the two tools alternating which goes first, and the best time is printed (values come
from the first round; all rounds use the same seeds). HVPs are counted, not
estimated: ours by op.calls, PyHessian's by wrapping its module-level hessian_vector_product. For the MLP the
'exact' column comes from the full float64 Hessian (torch.autograd.functional.hessian of the flattened-parameter
loss, then eigvalsh); the ResNet has none.

PyHessian 0.1's density calls torch.eig, removed from torch (it raises since 1.9): the error is printed and the
density is then rerun with torch.eig patched, for those calls only, to torch.linalg.eigh of its (symmetric)
tridiagonal in torch.eig's old (values [m, 2], vectors) layout; only the reruns are timed. PyHessian's
`loss.backward(create_graph=True)` warning about a grad/parameter reference cycle is silenced: every PyHessian
object here is built on .grad fields set to None and they are set to None again after it.

On a machine busy with other CPU work, run with --threads 1: with more torch threads than free cores each product
waits on descheduled threads, and per-product times then varied 20x within one run (2 threads, 2 shared cores).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from engine.curvature.hessian import HessianOperator, hutchinson_trace, hutchpp_trace, slq_density, top_eigenpairs
from engine.sources.data import synthetic_images
from engine.sources.models import MLP, CifarResNet

SEED = 0
EIG_MAX_ITER, EIG_TOL = 100, 1e-3
TRACE_SAMPLES, TRACE_TOL = 100, 1e-3
HUTCHPP_MATVECS = 99
SLQ_STEPS = 50


@dataclass
class Workload:
    """A model (seeded, untrained) and the one batch its Hessian is taken on."""

    name: str
    title: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    exact: bool  # small enough for the full Hessian


def digits(samples: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` scikit-learn digits, flattened to 64 features in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images[:samples].reshape(samples, -1), dtype=torch.float32) / 16.0
    return x, torch.tensor(bunch.target[:samples], dtype=torch.long)


def seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(SEED)
        return factory().eval()

    return make


WORKLOADS = {
    "mlp": Workload(
        "mlp", "MLP 64-32-10 (ReLU, untrained, seed 0) on 512 digits", seeded(lambda: MLP(64, [32], 10)), digits, True
    ),
    "resnet": Workload(
        "resnet",
        "CifarResNet(8, 10, 3, 8, shortcut=True), untrained, eval mode, on 128 synthetic 3x16x16 images",
        seeded(lambda: CifarResNet(8, 10, 3, 8, shortcut=True)),
        lambda: synthetic_images((3, 16, 16), 128, 10, SEED),
        False,
    ),
}


@dataclass
class Row:
    """One compared quantity: each tool's value, seconds and HVP count, and the exact value where known."""

    quantity: str
    py: float | None = None
    py_s: float | None = None
    py_hvps: int | None = None
    ours: float | None = None
    ours_s: float | None = None
    ours_hvps: int | None = None
    exact: float | None = None
    note: str = ""


class PyHessianRunner:
    """Fresh PyHessian `hessian` objects on one model and batch, with its Hessian-vector products counted."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        try:
            self.module = importlib.import_module("pyhessian.hessian")
        except ImportError:
            raise SystemExit("pyhessian is not installed: pip install --no-deps pyhessian==0.1") from None
        self.model, self.x, self.y = model, x, y
        self.hvps = 0

    @contextmanager
    def session(self) -> Iterator[object]:
        """A new pyhessian.hessian on clean .grad fields (its constructor accumulates into them), HVPs counted."""
        original = self.module.hessian_vector_product

        def counted(grads: object, params: object, v: object) -> object:
            self.hvps += 1
            return original(grads, params, v)

        self.model.zero_grad(set_to_none=True)
        self.hvps = 0
        torch.manual_seed(SEED)  # PyHessian draws its vectors from the global generator
        try:
            with mock.patch.object(self.module, "hessian_vector_product", counted):
                yield self.module.hessian(self.model, nn.CrossEntropyLoss(), data=(self.x, self.y), cuda=False)
        finally:
            self.model.zero_grad(set_to_none=True)  # drop the create_graph gradients and their graph


def _eig_via_eigh(matrix: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.eig's removed API for a symmetric matrix: values as [m, 2] (real, imaginary), vectors as columns."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def moments(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(m1, m2): the run-averaged quadrature estimates of tr(H)/n and tr(H^2)/n."""
    nodes, weights = np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    return float((weights * nodes).sum(1).mean()), float((weights * nodes**2).sum(1).mean())


def exact_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, float]:
    """Eigenvalues (ascending) of the full float64 Hessian of the mean cross-entropy, and the seconds it took."""
    start = time.perf_counter()
    double = copy.deepcopy(model).double().eval()
    names = [name for name, _ in double.named_parameters()]
    shapes = [p.shape for _, p in double.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in double.parameters()])
    xd = x.double()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        pieces = theta.split([s.numel() for s in shapes])
        params = {name: t.view(s) for name, t, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(double, params, (xd,)), y)

    hessian = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    eigenvalues = torch.linalg.eigvalsh(0.5 * (hessian + hessian.T)).numpy()
    return eigenvalues, time.perf_counter() - start


Side = Callable[[], tuple[Any, int]]  # returns (value, HVPs used)


def race(py_side: Side | None, ours_side: Side, repeats: int) -> tuple[tuple[Any, float, int], ...]:
    """Run both sides `repeats` times, alternating which goes first: (value, best seconds, HVPs) per side.

    Values and HVP counts are from the first round (every round uses the same seeds); the best time is
    reported because other work on a shared machine only ever adds time.
    """
    sides = [s for s in (py_side, ours_side) if s is not None]
    results: list[tuple[Any, float, int] | None] = [None] * len(sides)
    for r in range(repeats):
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            start = time.perf_counter()
            value, hvps = sides[i]()
            seconds = time.perf_counter() - start
            previous = results[i]
            results[i] = (value, seconds, hvps) if previous is None else (
                previous[0], min(previous[1], seconds), previous[2])
    out = [res for res in results if res is not None]
    return (None, *out) if py_side is None else tuple(out)


def ratio(py_s: float | None, ours_s: float | None) -> str:
    return "-" if py_s is None or ours_s is None else f"{py_s / ours_s:.2f}x"


def run_workload(w: Workload, repeats: int) -> None:
    """Compare both tools on one workload and print the table."""
    model = w.make_model()
    x, y = w.make_data()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    py = PyHessianRunner(model, x, y)

    def fresh_operator() -> HessianOperator:
        """A new operator on the batch: no gradient graph yet, its first product builds (and keeps) it."""
        return HessianOperator(model, params, [(x, y)], keep_graph=True)

    print(f"\n== {w.name}: {w.title}; {n} parameters, one batch of {len(y)}, threads={torch.get_num_threads()} ==")

    # warm-up: one product through each tool (both then discarded), so neither pays first-call costs in the timings
    fresh_operator().matvec(torch.ones(n))
    with py.session() as h:
        h.eigenvalues(maxIter=1, top_n=1)

    exact_eigs: np.ndarray | None = None
    if w.exact:
        exact_eigs, seconds = exact_spectrum(model, x, y)
        print(f"exact: full {n}x{n} float64 Hessian and eigvalsh in {seconds:.1f} s; "
              f"lambda_min {exact_eigs[0]:.6g}, lambda_max {exact_eigs[-1]:.6g}")
    else:
        print("exact: none for this workload (too many parameters for the full Hessian)")
    rows: list[Row] = []

    def ours(fn: Callable[[HessianOperator], object]) -> Callable[[], tuple[object, int]]:
        """fn on an operator built inside the timed call (as PyHessian's object is), and the products it used."""

        def call() -> tuple[object, int]:
            op = fresh_operator()
            return fn(op), op.calls

        return call

    # top eigenvalue
    def py_top() -> tuple[float, int]:
        with py.session() as h:
            values, _ = h.eigenvalues(maxIter=EIG_MAX_ITER, tol=EIG_TOL, top_n=1)
        return values[0], py.hvps

    (py_value, py_s, py_calls), (ours_top, ours_s, ours_calls) = race(
        py_top, ours(lambda op: top_eigenpairs(op, k=1, seed=SEED, rtol=1e-5)[0][0].item()), repeats)
    rows.append(Row("top eigenvalue", py_value, py_s, py_calls, ours_top, ours_s, ours_calls,
                    None if exact_eigs is None else float(exact_eigs[-1]),
                    "py: power iteration (largest |eigenvalue|); ours: Lanczos"))

    # trace
    def py_trace() -> tuple[tuple[float, int], int]:
        with py.session() as h:
            estimates = h.trace(maxIter=TRACE_SAMPLES, tol=TRACE_TOL)
        return (float(np.mean(estimates)), len(estimates)), py.hvps

    ((py_value, py_samples), py_s, py_calls), ((hutch, stderr), ours_s, ours_calls) = race(
        py_trace, ours(lambda op: hutchinson_trace(op, TRACE_SAMPLES, seed=SEED)), repeats)
    exact_trace = None if exact_eigs is None else float(exact_eigs.sum())
    rows.append(Row("trace (Hutchinson)", py_value, py_s, py_calls, hutch, ours_s, ours_calls, exact_trace,
                    f"py stopped at {py_samples} probes (its tol {TRACE_TOL} on the running mean); "
                    f"ours stderr {stderr:.3g}"))
    _, (hpp, ours_s, ours_calls) = race(None, ours(lambda op: hutchpp_trace(op, HUTCHPP_MATVECS, seed=SEED)), repeats)
    rows.append(Row("trace (ours Hutch++)", None, None, None, hpp, ours_s, ours_calls, exact_trace,
                    "ratio vs py's Hutchinson row above: " + ratio(rows[-1].py_s, ours_s)))

    # density, through its quadrature moments
    def py_density() -> tuple[tuple[float, float], int]:
        with py.session() as h:
            eigen_list_full, weight_list_full = h.density(iter=SLQ_STEPS, n_v=1)
        return moments(np.asarray(eigen_list_full), np.asarray(weight_list_full)), py.hvps

    def ours_density(op: HessianOperator) -> tuple[float, float]:
        _, _, nodes, weights = slq_density(op, runs=1, steps=SLQ_STEPS, seed=SEED)
        return moments(nodes, weights)

    note = "one SLQ run gives m1 and m2"
    try:
        py_density()
    except RuntimeError as err:
        print(f"pyhessian density failed on torch {torch.__version__}: RuntimeError: {str(err).splitlines()[0]}")
        print("  -> rerun (and timed) with torch.eig patched to torch.linalg.eigh for those calls")
        note += "; py with torch.eig -> eigh patch"
    with mock.patch.object(torch, "eig", _eig_via_eigh, create=True):
        ((py_m1, py_m2), py_s, py_calls), ((ours_m1, ours_m2), ours_s, ours_calls) = race(
            py_density, ours(ours_density), repeats)
    exact_m1 = None if exact_eigs is None else float(exact_eigs.mean())
    exact_m2 = None if exact_eigs is None else float((exact_eigs**2).mean())
    rows.append(Row("SLQ m1 = tr(H)/n", py_m1, py_s, py_calls, ours_m1, ours_s, ours_calls, exact_m1, note))
    rows.append(Row("SLQ m2 = tr(H^2)/n", py_m2, py_s, py_calls, ours_m2, ours_s, ours_calls, exact_m2, note))
    print_table(rows, with_exact=exact_eigs is not None)


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0].rstrip("dg"))
    return f"{'-':>{width}}" if value is None else format(value, spec)


def _rel(value: float | None, exact: float | None) -> str:
    if value is None or exact is None:
        return "-"
    return f"{abs(value - exact) / max(abs(exact), 1e-30):.1e}"


def print_table(rows: Sequence[Row], with_exact: bool) -> None:
    """One line per quantity; values to 6 significant digits, relative errors against exact where known."""
    head = (f"{'quantity':<21} {'pyhessian':>12} {'py s':>7} {'py HVP':>6} {'ours':>12} {'ours s':>7} "
            f"{'ours HVP':>8} {'py/ours':>7}")
    if with_exact:
        head += f" {'exact':>12} {'py relerr':>9} {'ours relerr':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        line = (f"{r.quantity:<21} {_fmt(r.py, '12.6g')} {_fmt(r.py_s, '7.3f')} {_fmt(r.py_hvps, '6d')} "
                f"{_fmt(r.ours, '12.6g')} {_fmt(r.ours_s, '7.3f')} {_fmt(r.ours_hvps, '8d')} "
                f"{ratio(r.py_s, r.ours_s):>7}")
        if with_exact:
            line += f" {_fmt(r.exact, '12.6g')} {_rel(r.py, r.exact):>9} {_rel(r.ours, r.exact):>11}"
        print(line)
    notes = [f"  {r.quantity}: {r.note}" for r in rows if r.note]
    if notes:
        print("notes:")
        print("\n".join(notes))


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the flags and run each chosen workload."""
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    parser = argparse.ArgumentParser(description="engine.curvature.hessian vs PyHessian 0.1: values, seconds, HVPs")
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds per quantity, tools alternating; the best time is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        version = importlib.metadata.version("pyhessian")
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, pyhessian {version}; "
          f"seeds {SEED}; py s, ours s = seconds incl. building each tool's object/operator (forward and "
          f"graph-building backward), py/ours = time ratio (>1: ours faster)")
    for name in WORKLOADS if args.workload == "all" else [args.workload]:
        run_workload(WORKLOADS[name], args.repeats)


if __name__ == "__main__":
    main()

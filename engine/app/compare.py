"""Compare runs: their surfaces side by side on shared axes and one colour scale, and their summary numbers
in one table (the seed's ResNet-vs-no-shortcut figure). Also drawn at the end of every Hydra multirun.

Run: landscape-compare runs/resnet20-synthetic runs/plain20-synthetic [--out runs] [--log]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from engine.core.errors import UserError, guarded
from engine.sources.losses import is_stderr
from engine.store.assemble import summarize
from engine.store.read import read_surface

COLUMNS = [
    ("center loss", lambda s: s["center"]["loss"]),
    ("center acc", lambda s: s["center"].get("accuracy")),
    ("min loss", lambda s: s.get("minimum", {}).get("loss")),
    ("basin x", lambda s: s["basin"]["x"].get("width")),
    ("basin y", lambda s: s["basin"].get("y", {}).get("width")),
    ("non-convex", lambda s: s["convexity"]["nonconvex_fraction"]),
    ("|lmin/lmax|", lambda s: s["convexity"]["mean_abs_eig_ratio"]),
    ("local minima", lambda s: s["convexity"]["local_minima"]),
    ("surface sharpness", lambda s: s.get("sharpness", {}).get("surface")),
    ("eps-sharpness %", lambda s: (s.get("sharpness", {}).get("epsilon") or {}).get("sharpness")),
    ("adaptive worst", lambda s: (s.get("sharpness", {}).get("adaptive") or {}).get("worst")),
    ("adaptive avg", lambda s: (s.get("sharpness", {}).get("adaptive") or {}).get("average")),
    ("asymmetry x", lambda s: ((s.get("sharpness", {}).get("asymmetry") or {}).get("x") or {}).get("index")),
    ("asymmetry y", lambda s: ((s.get("sharpness", {}).get("asymmetry") or {}).get("y") or {}).get("index")),
    ("loss barrier", lambda s: (s.get("barrier", {}).get("loss") or {}).get("value")),  # paths only (barrier.py)
    ("barrier se", lambda s: (s.get("barrier", {}).get("loss") or {}).get("stderr")),
    ("acc barrier", lambda s: (s.get("barrier", {}).get("accuracy") or {}).get("value")),
]


def _store_of(path: Path) -> Path:
    return path if path.suffix == ".zarr" else path / "landscape.zarr"


def compare_runs(runs: list[Path], out_dir: Path, log_scale: bool = False, clip: float | None = None) -> list[Path]:
    """Draw each metric the runs share (loss, accuracy, ...) side by side and write comparison.md / .json and the
    interactive comparison.html (the loss on a log colour scale, shared by the panels); returns the files."""
    from engine.figures.comparison import draw_comparison  # matplotlib: not at import, Hydra loads this callback

    if len(runs) < 2:
        raise UserError(f"compare needs at least 2 runs, got {len(runs)}")
    surfaces = {_store_of(r).parent.name: read_surface(_store_of(r)) for r in runs}
    lines = [n for n, s in surfaces.items() if s.attrs.get("layout") == "lines"]
    if lines:
        raise UserError(f"{lines[0]} holds N random lines, not a surface: compare their summary.json radius instead")
    if len({len(s.coords) for s in surfaces.values()}) != 1:
        raise UserError("cannot compare a 1D line with a 2D plane: " + ", ".join(surfaces))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [
        draw_comparison({n: (s.coords, s.metrics[m]) for n, s in surfaces.items()}, out_dir / f"comparison_{m}.png",
                        metric=m, log_scale=log_scale and m == "loss", clip=clip)
        for m in shared_metrics(surfaces)
    ]
    summaries = {name: summarize(s) for name, s in surfaces.items()}
    (out_dir / "comparison.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (out_dir / "comparison.md").write_text(table(summaries))
    from engine.figures.report import write_comparison_page  # plotly: only when comparing

    page = write_comparison_page(out_dir, {n: (s.coords, s.metrics) for n, s in surfaces.items()}, summaries,
                                 COLUMNS, shared_metrics(surfaces), clip, log_scale=True)
    return [*files, out_dir / "comparison.json", out_dir / "comparison.md", page]


def shared_metrics(surfaces: dict[str, Any]) -> list[str]:
    """The loss metrics every run's store holds, in the first run's order (curvature maps and standard errors
    aside)."""
    first = next(iter(surfaces.values())).metrics
    return [m for m in first if not m.startswith("hessian/") and not is_stderr(m)
            and all(m in s.metrics for s in surfaces.values())]


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the summary numbers, one row per run."""
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| run | " + " | ".join(c for c, _ in COLUMNS) + " |\n|---" + "|---" * len(COLUMNS) + "|\n"
    rows = [f"| {n}{'' if s['complete'] else ' (partial)'} | " + " | ".join(fmt(f(s)) for _, f in COLUMNS) + " |"
            for n, s in summaries.items()]
    return head + "\n".join(rows) + "\n"


class CompareCallback(Callback):
    """Hydra callback: after a multirun, compare the runs it completed (summary.json written since it began)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        start = getattr(self, "start", 0.0)
        runs = sorted(p.parent for p in sweep_dir.glob("*/summary.json") if p.stat().st_mtime >= start)
        if len(runs) >= 2:
            files = compare_runs(runs, sweep_dir)
            print(f"compared {len(runs)} runs: {files[0]}, {files[-1]}")
            print((sweep_dir / "comparison.md").read_text())


def main(argv: list[str] | None = None) -> None:
    """`landscape-compare RUN...`: the comparison figure and table of several runs (folders or .zarr stores)."""
    parser = argparse.ArgumentParser(prog="landscape-compare", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="run folders (runs/<name>) or their landscape.zarr stores")
    parser.add_argument("--out", default=None, help="folder for the figures and table (default: the runs' parent)")
    parser.add_argument("--log", action="store_true", help="log scale for the loss")
    parser.add_argument("--clip", type=float, default=None)
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs]

    def go() -> None:
        out = Path(args.out) if args.out else _store_of(runs[0]).parent.parent
        files = compare_runs(runs, out, args.log, args.clip)
        print((out / "comparison.md").read_text() + "files: " + ", ".join(map(str, files)))

    guarded(go)

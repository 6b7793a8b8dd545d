"""Run: python benchmarks/bench_checkouts.py BASELINE_CHECKOUT [--repeats 2] [-- hydra overrides]

The same `landscape` command timed end to end (training, sweep, summary, figures) with this checkout's engine and
with another checkout's (e.g. `git worktree add /tmp/base <commit>`), alternating A B A B so both see the same
machine load, each run in a fresh folder; prints every time and the ratio of the medians. Made for checking that a
restructure left the default run as fast as before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def cli_module(root: Path) -> str:
    """The CLI module of a checkout (the flat layout had engine/cli.py, the rooms have engine/app/cli.py)."""
    return "engine.app.cli" if (root / "engine" / "app" / "cli.py").exists() else "engine.cli"


def timed_run(root: Path, overrides: list[str]) -> float:
    """Seconds for one `landscape` command with the engine of `root`, in a fresh working folder."""
    code = f"import sys; sys.argv[0] = 'landscape'; from {cli_module(root)} import main; main()"
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, "eval.progress=false", *overrides], cwd=cwd, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{root}: the command failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path, help="the other checkout (its engine/ and conf/ are used)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="hydra overrides for both runs (after --)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"baseline": [], "this": []}
    for k in range(args.repeats):
        for name, root in (("baseline", args.baseline.resolve()), ("this", HERE)):
            times[name].append(timed_run(root, args.overrides))
            print(f"run {k + 1}: {name:8s} {times[name][-1]:6.1f} s", flush=True)
    base, this = statistics.median(times["baseline"]), statistics.median(times["this"])
    print(f"median: baseline {base:.1f} s, this checkout {this:.1f} s; this / baseline = {this / base:.3f}")


if __name__ == "__main__":
    main()

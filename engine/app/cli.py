"""Command-line entry points: `landscape` (train if needed, sweep, summarize, draw), `landscape-train`,
`landscape-plot STORE` (redraw from a store), `landscape-export STORE` (VTK files for ParaView) and
`landscape-spectrum` (Hessian spectra at theta*, no sweep), `landscape-check STORE...` (damaged chunks listed) and
`landscape-plan` (memory per rank and wall time of a run for each parallel.shard, nothing swept).
Bad input ends in one line on stderr and exit code 2; config mistakes are caught before Hydra starts a job
(engine/config/check.py), so a refused command leaves its run folder as it was.

Run: landscape [hydra overrides, e.g. model=resnet20 data=synthetic grid.resolution=[31,31]]
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from engine.config.check import check_command_line, open_dict_keys, to_run_config
from engine.config.cross import check_combination
from engine.config.files import CONF_DIR
from engine.config.record import hydra_job
from engine.config.schema import PlotConfig, register_configs
from engine.core.errors import UserError, guarded


def check_argv(preflight: bool = True) -> None:
    """Check the command line's overrides before hydra.main runs: one line and exit code 2 on a mistake.
    model.kwargs / data.kwargs / loss.kwargs keys need no `+` (open_dict_keys). A single run is also preflighted
    here (its input files, its device), so that a refused command leaves no run folder behind; the jobs of a
    multirun are preflighted where the launcher runs them."""
    sys.argv[1:] = open_dict_keys(sys.argv[1:])
    try:
        run_cfg = check_command_line(sys.argv[1:])
        if run_cfg is not None:
            from engine.app.stages import preflight as check_run

            if preflight:
                check_run(run_cfg)
            else:
                check_combination(run_cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (torchrun stopping the other ranks, SLURM preemption) into a clean exit that releases
    the store lease; submitit installs its own handlers inside its jobs, so this is for the CLI only."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _landscape(cfg: DictConfig) -> None:
    from engine.app.landscape import run_landscape

    def go() -> None:
        run_cfg, resolved = to_run_config(cfg)
        with hydra_job(cfg):  # run_landscape writes .hydra/ once the store accepted this config
            run_landscape(run_cfg, resolved)

    guarded(go)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _train(cfg: DictConfig) -> None:
    from engine.app.landscape import run_train

    guarded(lambda: print(f"final weights: {run_train(to_run_config(cfg)[0])}"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _spectrum(cfg: DictConfig) -> None:
    from engine.app.spectrum import run_spectrum

    def go() -> None:
        run_cfg, resolved = to_run_config(cfg)
        run_spectrum(run_cfg, resolved)

    guarded(go)


def main() -> None:
    """`landscape`: the whole flow for one Hydra config (or several with -m)."""
    register_configs()
    check_argv()
    _exit_on_sigterm()
    _landscape()


def train_main() -> None:
    """`landscape-train`: only the training stage (per-epoch checkpoints and final.pt)."""
    register_configs()
    check_argv(preflight=False)
    _train()


def spectrum_main() -> None:
    """`landscape-spectrum`: the Hessian spectra at theta* (top-k eigenpairs, traces, SLQ density), no sweep."""
    register_configs()
    check_argv()
    _exit_on_sigterm()
    _spectrum()


def compare_main(argv: list[str] | None = None) -> None:
    """`landscape-compare RUN...`: several runs side by side on one colour scale, and their numbers."""
    from engine.app.compare import main as compare

    compare(argv)


def export_main(argv: list[str] | None = None) -> None:
    """`landscape-export STORE`: the store's surface, line and trajectory as VTK files for ParaView."""
    from engine.app.export import main as export

    export(argv)


def plan_main(argv: list[str] | None = None) -> None:
    """`landscape-plan [--ranks W] [--points N] OVERRIDES...`: memory per rank for each parallel.shard, tiles per
    group and the grid's wall time from points timed here, without sweeping or writing anything."""
    parser = argparse.ArgumentParser(prog="landscape-plan", description=plan_main.__doc__)
    parser.add_argument("--ranks", type=int, default=1, help="ranks to plan for (GPUs of the job; default 1)")
    parser.add_argument("--points", type=int, default=3, help="grid points timed on this device (default 3)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="memory of one rank's device to plan against (default: this machine's GPU, or its host "
                             "memory over the ranks)")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    register_configs()

    def go() -> None:
        from engine.app.plan import plan_lines

        if args.ranks < 1 or args.points < 1:
            raise UserError(f"--ranks={args.ranks} and --points={args.points} must be >= 1")
        run_cfg = check_command_line(open_dict_keys(overrides))
        if run_cfg is None:
            raise UserError("landscape-plan plans one run: leave out -m and comma-separated sweeps")
        print("\n".join(plan_lines(run_cfg, args.ranks, args.points, args.memory_gb)))

    guarded(go)


def check_main(argv: list[str] | None = None) -> None:
    """`landscape-check STORE...`: decode every chunk of each store and list what is damaged; exit 1 if any is."""
    parser = argparse.ArgumentParser(prog="landscape-check", description=check_main.__doc__)
    parser.add_argument("stores", nargs="+", help="run folders (runs/<name>) or their landscape.zarr / spectrum.zarr")
    args = parser.parse_args(argv)

    def go() -> bool:
        from engine.figures.select import store_path
        from engine.store.check import check_store

        clean = True
        for given in args.stores:
            store = store_path(given)
            if store.suffix != ".zarr" and (store / "spectrum.zarr").exists():  # a landscape-spectrum run folder
                store = store / "spectrum.zarr"
            found = check_store(store)
            clean = clean and not found
            print(f"{store}: clean" if not found else f"{store}: {len(found)} problem(s); rerun the same "
                  "`landscape` command to recompute them")
            for damage in found:
                print(f"  {damage}")
        return clean

    sys.exit(0 if guarded(go) else 1)


def plot_main(argv: list[str] | None = None) -> None:
    """`landscape-plot STORE`: redraw the figures and summary.json of a store without recomputing."""
    parser = argparse.ArgumentParser(prog="landscape-plot", description=plot_main.__doc__)
    parser.add_argument("store", help="a run folder (runs/<name>) or its landscape.zarr store")
    parser.add_argument("--out", help="folder for the figures (default: figures/ beside the store)")
    parser.add_argument("--log", action="store_true", help="log scale for the loss")
    parser.add_argument("--clip", type=float, default=None, help="draw losses above this value at this value")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated figure formats")
    parser.add_argument("--levels", default="log", choices=("log", "quantile", "linear"),
                        help="loss contour levels (default log: geometric, resolves the basin)")
    parser.add_argument("--metrics", nargs="+", default=None, help="draw only these metrics' figures (default: all)")
    parser.add_argument("--no-html", action="store_true", help="no landscape.html / report.html")
    parser.add_argument("--basin-rise", type=float, default=0.5, help="basin threshold above the center loss")
    parser.add_argument("--sharpness-radius", type=float, default=0.25,
                        help="surface sharpness: max loss rise within this radius, over 1 + center loss")
    args = parser.parse_args(argv)

    def go() -> None:
        from engine.figures.draw import draw, draw_report
        from engine.figures.select import complete_surface, select_metrics, store_path
        from engine.store.assemble import assemble

        store = store_path(args.store)
        surface, _ = complete_surface(store)  # refused before summary.json or figures/ is written
        names = select_metrics(surface, args.metrics, store)
        summary = assemble(store, args.basin_rise, sharpness_radius=args.sharpness_radius)
        plot = PlotConfig(log_scale=args.log, clip=args.clip, formats=args.formats.split(","), levels=args.levels,
                          html=not args.no_html)
        figures = draw(store, Path(args.out) if args.out else store.parent / "figures", plot, metrics=names)
        if plot.html and not args.out and (store.parent / "summary.json").is_file():  # a run folder: its report
            figures.append(draw_report(store, store.parent, figures))
        state = "complete" if summary["complete"] else f"partial, {len(summary['missing_tiles'])} tile(s) missing"
        print(f"{store}: {state}; {len(figures)} figure file(s) in {figures[0].parent if figures else args.out}")

    guarded(go)


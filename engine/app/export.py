"""`landscape-export STORE`: a store's surface (or line) and trajectory as VTK files to open in ParaView.

Run: landscape-export runs/resnet8-digits [--out DIR] [--log] [--metrics loss accuracy]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.core.errors import guarded
from engine.figures.select import complete_surface, store_path
from engine.figures.vtk import export_vtk


def main(argv: list[str] | None = None) -> None:
    """`landscape-export STORE`: surface.vts (or line.vts) and trajectory.vtu of a run, for ParaView."""
    parser = argparse.ArgumentParser(prog="landscape-export", description=main.__doc__)
    parser.add_argument("store", help="a run folder (runs/<name>) or its landscape.zarr store")
    parser.add_argument("--out", default=None, help="folder for the VTK files (default: vtk/ in the run folder)")
    parser.add_argument("--log", action="store_true", help="height = log10 of the loss (point data stay raw)")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="metrics written as point data (default: all; loss always)")
    args = parser.parse_args(argv)

    def go() -> None:
        store = store_path(args.store)
        _, state = complete_surface(store)
        out = Path(args.out) if args.out else store.parent / "vtk"
        files = export_vtk(store, out, log=args.log, metrics=args.metrics)
        print(f"{store}: {state.strip(' []') or 'complete'}; wrote")
        print("\n".join(f"  {f}" for f in files))

    guarded(go)

"""What `landscape-plot` and `landscape-export` show of a store: the store of a run folder, its complete level (the
full grid, else the coarse preview) and the metrics asked for; refused in one line before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.core.errors import UserError
from engine.figures.draw import surface_to_draw
from engine.store.read import Surface


def store_path(path: str | Path) -> Path:
    """The store itself (a .zarr path) or the landscape.zarr of a run folder (runs/NAME)."""
    path = Path(path)
    return path / "landscape.zarr" if path.suffix != ".zarr" and (path / "landscape.zarr").exists() else path


def complete_surface(store: str | Path) -> tuple[Surface, str]:
    """The level the figures draw (surface_to_draw) and its title suffix; a store with no complete level is refused,
    since its surface would be mostly holes."""
    try:
        surface, state = surface_to_draw(store)
    except KeyError as err:  # a store whose writer died before creating every array
        raise UserError(f"store {store} is damaged (no array {err}); rerun `landscape` with the same config") from None
    if not surface.done.all():
        done = f"{int(surface.done.sum())}/{surface.done.size} tiles done"
        raise UserError(f"store {store} has no complete level ({done}); finish it with `landscape` (same config) first")
    return surface, state


def select_metrics(surface: Surface, metrics: Sequence[str] | None, store: str | Path) -> list[str]:
    """The store's metric names asked for (all when None), in the store's order; a name may also be spelled with
    '_' for '/' (as in the VTK files). An unknown name is refused with the store's metrics."""
    if metrics is None:
        return list(surface.metrics)
    known = {**{m.replace("/", "_"): m for m in surface.metrics}, **{m: m for m in surface.metrics}}
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise UserError(f"metric {unknown[0]!r} is not in store {store}; it holds: {', '.join(surface.metrics)}")
    chosen = {known[m] for m in metrics}
    return [m for m in surface.metrics if m in chosen]

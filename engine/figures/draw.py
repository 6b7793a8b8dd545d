"""Every figure of a store, drawn from the store alone (after a run, or again with `landscape-plot`): the surfaces,
the curvature maps and the spectra it holds; a partial store draws its complete coarse preview, marked as such."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.config.schema import PlotConfig
from engine.curvature.spectra import CURVATURE_METRICS
from engine.figures.barrier import draw_barrier
from engine.figures.curvature import draw_curvature_maps, draw_spectrum
from engine.figures.surfaces import draw_surfaces
from engine.sources.losses import STDERR
from engine.store.barrier import is_path
from engine.store.grid import PREVIEW
from engine.store.read import Surface, read_array, read_surface
from engine.store.spectra import read_spectrum


def surface_to_draw(store_path: str | Path) -> tuple[Surface, str]:
    """The full surface when complete; else the complete coarse preview if there is one; and a title suffix."""
    surface = read_surface(store_path)
    if bool(surface.done.all()):
        return surface, ""
    done = f"{int(surface.done.sum())}/{surface.done.size} tiles done"
    if PREVIEW in surface.attrs.get("levels", []):
        preview = read_surface(store_path, PREVIEW)
        if bool(preview.done.all()):
            return preview, f" [partial: coarse preview, {done}]"
    return surface, f" [partial: {done}]"


def draw(store_path: str | Path, out_dir: str | Path, plot: PlotConfig | None = None,
         metrics: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure of a store into out_dir (redraws from the store alone, no recompute).

    While the full grid is incomplete, the complete coarse preview is drawn instead, marked as partial.
    """
    plot = plot or PlotConfig()
    surface, state = surface_to_draw(store_path)
    conf = surface.attrs["config"]
    title = f"{conf['model']['name']} on {conf['data']['name']} ({conf['direction']['norm']}-normalized){state}"
    if surface.attrs.get("layout") == "lines":  # N random lines: curves and radii, no surface or page
        from engine.figures.lines import draw_lines

        return draw_lines(surface, out_dir, plot, title, conf.get("summary", {}).get("basin_rise", 0.5))
    markers = surface.attrs.get("markers") or {"theta*": [0.0 for _ in surface.coords]}
    markers = {name: tuple(point) for name, point in markers.items()}
    chosen = None if metrics is None else {"loss", *metrics}  # a chosen metric's standard errors come with it
    m = {k: v for k, v in surface.metrics.items() if chosen is None or k in chosen or k.removesuffix(STDERR) in chosen}
    formats = list(plot.formats)
    labels = surface.attrs.get("axis_labels", ["d1", "d2"])
    trajectory = read_array(store_path, "trajectory/coords") if len(surface.coords) == 2 else None
    paths = draw_surfaces(surface.coords, {k: v for k, v in m.items() if not k.startswith("hessian/")}, out_dir,
                          title=title,
                          axis_labels=labels, log_scale=plot.log_scale, clip=plot.clip, formats=formats,
                          markers=markers, path=trajectory, levels=plot.levels, n_levels=plot.n_levels)
    if is_path(surface):  # a path between two models: its barrier
        paths += draw_barrier(surface, Path(out_dir), title, labels[0], formats)
    if all(k in m for k in CURVATURE_METRICS):  # the loss is always drawn, so m holds it
        lambda_max, lambda_min, ratio = (m[k] for k in CURVATURE_METRICS)
        paths += draw_curvature_maps(tuple(surface.coords), m["loss"], lambda_max, lambda_min, ratio, out_dir,
                                     formats=formats, title=title, markers=markers)
    spectrum = read_spectrum(store_path)
    if spectrum is not None:
        matrix = "GGN" if spectrum.matrix == "ggn" else "Hessian"
        name = f"{conf['model']['name']} on {conf['data']['name']}, {matrix} at theta*"
        paths += draw_spectrum(spectrum, out_dir, formats=formats, title=name)
    if plot.html:
        paths.append(draw_page(store_path, out_dir, plot))
    return paths


def draw_report(store_path: str | Path, run_dir: str | Path, figures: list[Path]) -> Path:
    """run_dir/report.html from the store, run_dir's summary.json and provenance.json (when written) and the
    figures drawn."""
    from engine.figures.report import write_report  # plotly: only when asked

    run = Path(run_dir)
    surface = read_surface(store_path)
    conf = surface.attrs["config"]
    summary_path, provenance_path = run / "summary.json", run / "provenance.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else {}
    provenance.setdefault("fingerprint", surface.attrs.get("fingerprint"))
    provenance.setdefault("config_hash", surface.attrs.get("config_hash"))
    title = f"{conf['model']['name']} on {conf['data']['name']} ({run.name})"
    return write_report(run, summary, conf, provenance, figures, title)


def draw_page(store_path: str | Path, out_dir: str | Path, plot: PlotConfig | None = None) -> Path:
    """out_dir/landscape.html: the store's interactive page (the coarse preview, marked partial, while the full
    grid is incomplete)."""
    from engine.figures.pages import (  # plotly: only when asked
        block_figures,
        line_figures,
        page,
        surface_figures,
        write_page,
    )
    from engine.figures.report import block_table

    plot = plot or PlotConfig()
    surface, state = surface_to_draw(store_path)
    conf = surface.attrs["config"]
    title = f"{conf['model']['name']} on {conf['data']['name']} ({conf['direction']['norm']}-normalized)"
    markers = {n: tuple(p) for n, p in (surface.attrs.get("markers") or {"theta*": [0.0] * len(surface.coords)}
                                        ).items()}
    labels = surface.attrs.get("axis_labels", ["d1", "d2"])
    log_default = plot.log_scale or plot.levels != "linear"
    if len(surface.coords) == 1:
        figures = line_figures(np.asarray(surface.coords[0], dtype=float), surface.metrics, title=title,
                               label=labels[0], clip=plot.clip, log_default=plot.log_scale, markers=markers)
    else:
        trajectory = read_array(store_path, "trajectory/coords")
        figures = surface_figures(surface.coords, surface.metrics, title=title, labels=labels, clip=plot.clip,
                                  log_default=log_default, markers=markers, path=trajectory)
    sections = [("About this page", "")]
    spectrum = read_spectrum(store_path)
    if spectrum is not None and spectrum.blocks is not None:
        blocks = spectrum.blocks.numbers()
        figures += block_figures(blocks)
        sections.append((f"Curvature per {blocks['kind']} (hessian.blocks)", block_table(blocks)))
    banner = f"Partial run:{state.strip(' []').removeprefix('partial:')}. Run the same command again to finish it."
    grid = (f"{len(surface.coords[0])}-point line along {labels[0]}" if len(surface.coords) == 1 else
            f"{len(surface.coords[0])}x{len(surface.coords[1])} grid over {labels[0]}, {labels[1]}")
    turn = "" if len(surface.coords) == 1 else "; drag to turn the surface, scroll to zoom"
    about = (f"<p>{grid}; metrics: {', '.join(surface.metrics)}. Hover for values; the buttons switch the loss "
             f"between linear and log scale{turn}.</p>")
    sections[0] = ("About this page", about)
    return write_page(Path(out_dir) / "landscape.html", page(title, sections, figures, banner if state else ""))

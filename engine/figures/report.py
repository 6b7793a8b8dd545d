"""report.html: one self-contained page per run holding its numbers (every entry of summary.json), every figure
(PNG, embedded), a link to the interactive page, the resolved config and the provenance (versions, devices, ranks,
weight fingerprint, config hash, wall time); and the comparison page of `landscape-compare`."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.figures.pages import comparison_figure, page, write_page

SECTIONS = {"center": "At theta* (the centre)", "minimum": "Lowest point of the grid", "basin": "Basin widths",
            "sharpness": "Sharpness", "convexity": "Convexity of the surface", "curvature": "Curvature map",
            "spectrum": "Hessian spectrum at theta*"}


def flatten(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """(dotted key, leaf) pairs of a nested summary; lists of numbers stay one leaf."""
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in flatten(v, f"{key}.{k}" if key else str(k))]
    return [(key, value)]


def cell(value: Any) -> str:
    """A table cell: numbers shown to 6 significant digits and kept whole in data-value (the tests read it)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return f"<td data-value='{html.escape(json.dumps(value))}'>{html.escape(str(value))}</td>"
    if isinstance(value, int | float):
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        return f"<td class='num' data-value='{json.dumps(value)}'>{shown}</td>"
    text = json.dumps(value)
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) \
        else text
    return f"<td class='num' data-value='{html.escape(text)}'>{html.escape(shown)}</td>"


def table(rows: Sequence[tuple[str, Any]], keyed: bool = True) -> str:
    """A two-column table of named values (each row's key in data-key)."""
    body = "".join(f"<tr data-key='{html.escape(k)}'><th>{html.escape(k)}</th>{cell(v)}</tr>" if keyed else
                   f"<tr><th>{html.escape(k)}</th>{cell(v)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def block_table(blocks: Mapping[str, Any]) -> str:
    """Per-block curvature as one row per block: its size, lambda_max, lambda_min (each +- its Ritz bound) and
    trace (+- its standard error)."""
    head = "<tr><th>block</th><th>parameters</th><th>lambda_max</th><th>+-</th><th>lambda_min</th><th>+-</th>" \
           "<th>trace</th><th>+-</th></tr>"
    keys = ("sizes", "lambda_max", "lambda_max_bound", "lambda_min", "lambda_min_bound", "trace", "trace_stderr")
    rows = "".join(f"<tr data-block='{html.escape(str(name))}'><th>{html.escape(str(name))}</th>"
                   + "".join(cell(blocks[k][i]) for k in keys) + "</tr>" for i, name in enumerate(blocks["names"]))
    return f"<table>{head}{rows}</table>"


def numbers_sections(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary as sections: the run's state first, then each group of numbers under its heading."""
    state = [(k, summary[k]) for k in ("complete", "points_computed", "points_total", "nonfinite_points",
                                       "missing_tiles", "max_accuracy", "store") if k in summary]
    sections = [("Run", table([(k, v) for k, v in flatten({k: v for k, v in state})]))]
    for key, head in SECTIONS.items():
        if key in summary and summary[key] is not None:
            sections.append((head, table(flatten(summary[key], key))))
    blocks = (summary.get("spectrum") or {}).get("blocks")
    if blocks:
        sections.append((f"Curvature per {blocks['kind']} (hessian.blocks)", block_table(blocks)))
    rest = [k for k in summary if k not in SECTIONS and k not in dict(state)]
    if rest:
        sections.append(("Other numbers", table(flatten({k: summary[k] for k in rest}))))
    return sections


def embedded(figures: Sequence[Path]) -> str:
    """Every PNG figure inlined as a data URI (the report travels as one file), captioned with its name."""
    parts = []
    for path in sorted(p for p in figures if p.suffix == ".png"):
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(path.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(path.name)}</figcaption></figure>")
    return "".join(parts) or "<p>No figures (plot.enabled=false, or none drawn).</p>"


def config_text(config: Mapping[str, Any]) -> str:
    """The resolved config as indented YAML-like text."""
    def lines(value: Any, depth: int) -> list[str]:
        out = []
        for k, v in value.items():
            if isinstance(v, Mapping) and v:
                out += [f"{'  ' * depth}{k}:", *lines(v, depth + 1)]
            else:
                out.append(f"{'  ' * depth}{k}: {json.dumps(v)}")
        return out

    return "<pre>" + html.escape("\n".join(lines(config, 0))) + "</pre>"


def write_report(run_dir: Path, summary: Mapping[str, Any], config: Mapping[str, Any],
                 provenance: Mapping[str, Any], figures: Sequence[Path], title: str) -> Path:
    """run_dir/report.html: the numbers, figures, config and provenance of one run."""
    interactive = run_dir / "figures" / "landscape.html"
    link = ("<p><a href='figures/landscape.html'>Interactive page</a> (3D surface, contour map, hover, log scale)."
            "</p>" if interactive.exists() else "")
    partial = "" if summary.get("complete", True) else (
        f"Partial run: {len(summary.get('missing_tiles', []))} tile(s) missing; the figures show what is done. "
        "Run the same command again to finish it.")
    sections = [("Summary", link + "<p>Every number of summary.json, grouped.</p>"), *numbers_sections(summary),
                ("Figures", embedded(figures)),
                ("Provenance", table(flatten({"provenance": dict(provenance)}))),
                ("Resolved config", config_text(config))]
    return write_page(run_dir / "report.html", page(f"Report: {title}", sections, [], partial))


def write_comparison_page(out_dir: Path, runs: Mapping[str, tuple[Sequence[np.ndarray], Mapping[str, np.ndarray]]],
                          summaries: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, Any]],
                          metrics: Sequence[str], clip: float | None = None, log_scale: bool = True) -> Path:
    """out_dir/comparison.html: the comparison table and each shared metric of every run side by side on one scale."""
    head = "<tr><th>run</th>" + "".join(f"<th>{html.escape(c)}</th>" for c, _ in columns) + "</tr>"
    rows = "".join(
        f"<tr data-run='{html.escape(n)}'><th>{html.escape(n)}{'' if s.get('complete', True) else ' (partial)'}"
        f"</th>" + "".join(cell(f(s)) for _, f in columns) + "</tr>" for n, s in summaries.items())
    figures = [(f"compare-{m.replace('/', '-')}",
                comparison_figure({n: (c, ms[m]) for n, (c, ms) in runs.items()}, m, clip,
                                  log_scale and m == "loss")) for m in metrics]
    return write_page(out_dir / "comparison.html",
                      page(f"Comparison of {len(runs)} runs", [("Numbers", f"<table>{head}{rows}</table>")],
                           figures))

"""Interactive pages drawn with plotly, one self-contained HTML file each (plotly's JavaScript inlined once, so a page
opens offline, from a cluster's file system or an e-mail attachment): a run's surface page (3D surface, contour map,
accuracy and other metric maps, curvature maps, trajectory and model markers; hover reads coordinates and values;
a log-scale toggle) or its 1D line, and the side-by-side comparison of several runs on one colour scale."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from engine.figures import common
from engine.sources.losses import is_stderr, stderr_name

SCALE = "Viridis"
SIGNED = "RdBu_r"
CURVATURE_NAMES = {"hessian/lambda_max": "lambda_max", "hessian/lambda_min": "lambda_min",
                   "hessian/ratio": "|lambda_min / lambda_max|", "loss_stderr": "standard error of the loss"}
BAND = 2.0  # error bars of the 1D page: +- this many standard errors (as the line figure's band)


def capped(values: np.ndarray, clip: float | None, auto: bool) -> np.ndarray:
    """The values as drawn: NaN/-inf missing, +inf and values above the cap at the cap (figures.common's rule)."""
    return np.asarray(common.prepare(values, clip, auto=auto).filled(np.nan), dtype=float)


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Colour-bar ticks of a log10 axis labelled with the values themselves (1, 2, 5 per decade)."""
    vals = [m * 10.0**e for e in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
    inside = [v for v in vals if lo <= math.log10(v) <= hi] or [10**lo, 10**hi]
    return [math.log10(v) for v in inside], [f"{v:.3g}" for v in inside]


def hover(coords: Sequence[np.ndarray], metrics: Mapping[str, np.ndarray],
          labels: Sequence[str]) -> tuple[np.ndarray, str]:
    """customdata [ny, nx, metrics] and the hover template that reads every metric's raw value at a point."""
    names = list(metrics)
    data = np.stack([np.asarray(metrics[n], dtype=float).T for n in names], axis=-1)
    rows = [f"{labels[0]} = %{{x:.4g}}", f"{labels[1]} = %{{y:.4g}}"]
    rows += [f"{n} = %{{customdata[{k}]:.5g}}" for k, n in enumerate(names)]
    return data, "<br>".join(rows) + "<extra></extra>"


def surface_figures(coords: Sequence[np.ndarray], metrics: Mapping[str, np.ndarray], *, title: str,
                    labels: Sequence[str], clip: float | None, log_default: bool,
                    markers: Mapping[str, Sequence[float]], path: np.ndarray | None) -> list[tuple[str, go.Figure]]:
    """The 2D page's figures: 3D surface and contour map of the loss (each with a linear/log toggle), then a map
    of every other metric, the loss's standard error and the curvature maps."""
    x, y = (np.asarray(c, dtype=float) for c in coords)
    loss = capped(metrics["loss"], clip, auto=True)
    finite = loss[np.isfinite(loss)]
    positive = finite.size > 0 and bool(finite.min() > 0)
    lin = loss.T
    lg = np.log10(lin) if positive else lin
    data, template = hover(coords, metrics, labels)
    use_log = log_default and positive
    bounds = (float(np.nanmin(lg)), float(np.nanmax(lg))) if finite.size else (0.0, 1.0)
    tickvals, ticktext = log_ticks(*bounds) if positive else ([], [])
    log_bar = {"title": {"text": "loss"}, "tickvals": tickvals, "ticktext": ticktext}
    lin_bar = {"title": {"text": "loss"}}
    out = []
    for kind in ("surface", "contour"):
        fig = go.Figure()
        z = lg if use_log else lin
        if kind == "surface":
            fig.add_trace(go.Surface(x=x, y=y, z=z, customdata=data, hovertemplate=template, colorscale=SCALE,
                                     colorbar=log_bar if use_log else lin_bar, name="loss"))
        else:
            fig.add_trace(go.Contour(x=x, y=y, z=z, customdata=data, hovertemplate=template, colorscale=SCALE,
                                     ncontours=common.N_LEVELS, colorbar=log_bar if use_log else lin_bar,
                                     contours={"showlines": True}, line={"width": 0.5}, name="loss"))
        add_markers(fig, kind, x, y, z, markers, path)
        scene = {"xaxis": {"title": {"text": labels[0]}}, "yaxis": {"title": {"text": labels[1]}},
                 "zaxis": {"title": {"text": "log10 loss" if use_log else "loss"}}}
        fig.update_layout(title={"text": f"{title}: loss {kind}", "x": 0.5}, height=640,
                          margin={"l": 60, "r": 20, "t": 90},
                          **({"scene": scene} if kind == "surface" else
                             {"xaxis": {"title": {"text": labels[0]}}, "yaxis": {"title": {"text": labels[1]}}}))
        if positive:
            toggle(fig, lin, lg, lin_bar, log_bar, use_log, kind)
        out.append((f"loss-{kind}", fig))
    for name, values in metrics.items():
        if name == "loss" or (is_stderr(name) and name != "loss_stderr"):
            continue
        signed = name == "hessian/lambda_min" or (name == "hessian/lambda_max" and np.nanmin(values) < 0)
        fig = go.Figure(go.Heatmap(x=x, y=y, z=capped(values, None, auto=False).T, customdata=data,
                                   hovertemplate=template, colorscale=SIGNED if signed else SCALE,
                                   zmid=0.0 if signed else None,
                                   colorbar={"title": {"text": CURVATURE_NAMES.get(name, name)}}))
        add_markers(fig, "contour", x, y, None, markers, path)
        fig.update_layout(title={"text": f"{title}: {CURVATURE_NAMES.get(name, name)}"}, height=520,
                          xaxis={"title": {"text": labels[0]}}, yaxis={"title": {"text": labels[1]}})
        out.append((f"map-{name.replace('/', '-')}", fig))
    return out


def toggle(fig: go.Figure, lin: np.ndarray, lg: np.ndarray, lin_bar: dict[str, Any], log_bar: dict[str, Any],
           use_log: bool, kind: str) -> None:
    """Buttons that switch the loss trace (trace 0) between linear and log10 values."""
    def state(z: np.ndarray, bar: dict[str, Any], axis: str) -> dict[str, Any]:
        layout = {"scene.zaxis.title.text": axis} if kind == "surface" else {}
        return {"label": "log scale" if z is lg else "linear scale", "method": "update",
                "args": [{"z": [z], "colorbar": [bar]}, layout, [0]]}

    buttons = [state(lin, lin_bar, "loss"), state(lg, log_bar, "log10 loss")]
    fig.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "x": 0.0, "y": 1.12, "xanchor": "left",
                                    "active": 1 if use_log else 0, "buttons": buttons, "showactive": True}])


def add_markers(fig: go.Figure, kind: str, x: np.ndarray, y: np.ndarray, z: np.ndarray | None,
                markers: Mapping[str, Sequence[float]], path: np.ndarray | None) -> None:
    """The named models as stars and the projected trajectory as a line, on the map or on the surface (their legend
    below the plot, clear of the colour bar)."""
    fig.update_layout(legend={"orientation": "h", "x": 0.0, "y": -0.12, "yanchor": "top"})
    def height(px: float, py: float) -> float:
        if z is None:
            return 0.0
        v = z[int(np.abs(y - py).argmin()), int(np.abs(x - px).argmin())]
        return float(v) if np.isfinite(v) else float(np.nanmin(z))

    names = list(markers)
    mx, my = [float(markers[n][0]) for n in names], [float(markers[n][1]) for n in names]
    if kind == "surface":
        if path is not None:
            fig.add_trace(go.Scatter3d(x=path[:, 0], y=path[:, 1], z=[height(a, b) for a, b in path], mode="lines",
                                       line={"color": "black", "width": 4}, name="trajectory"))
        fig.add_trace(go.Scatter3d(x=mx, y=my, z=[height(a, b) for a, b in zip(mx, my)], mode="markers+text",
                                   text=names, marker={"color": "red", "size": 5, "symbol": "diamond"},
                                   name="models"))
        return
    if path is not None:
        fig.add_trace(go.Scatter(x=path[:, 0], y=path[:, 1], mode="lines+markers", name="trajectory",
                                 line={"color": "black"}, marker={"size": 5, "color": "white",
                                                                  "line": {"color": "black", "width": 1}}))
    fig.add_trace(go.Scatter(x=mx, y=my, mode="markers+text", text=names, textposition="top right", name="models",
                             marker={"symbol": "star", "size": 14, "color": "red", "line": {"color": "black",
                                                                                           "width": 1}}))


def line_figures(x: np.ndarray, metrics: Mapping[str, np.ndarray], *, title: str, label: str, clip: float | None,
                 log_default: bool, markers: Mapping[str, Sequence[float]]) -> list[tuple[str, go.Figure]]:
    """The 1D page: loss (left axis, a linear/log toggle) and accuracy (right axis), each other metric below; a
    metric with standard errors has error bars of +-BAND of them."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    loss = capped(metrics["loss"], clip, auto=False)
    fig.add_trace(go.Scatter(x=x, y=loss, mode="lines+markers", name="loss", error_y=error_bars(metrics, "loss"),
                             hovertemplate=f"{label} = %{{x:.4g}}<br>loss = %{{y:.5g}}<extra></extra>"))
    if "accuracy" in metrics:
        fig.add_trace(go.Scatter(x=x, y=np.asarray(metrics["accuracy"], dtype=float), mode="lines+markers",
                                 name="accuracy", error_y=error_bars(metrics, "accuracy"),
                                 hovertemplate=f"{label} = %{{x:.4g}}<br>accuracy = %{{y:.4f}}<extra></extra>"),
                      secondary_y=True)
    for name, point in markers.items():
        fig.add_vline(x=float(point[0]), line_dash="dash", annotation_text=name)
    finite = loss[np.isfinite(loss)]
    can_log = finite.size > 0 and bool(finite.min() > 0)
    fig.update_layout(title={"text": f"{title}: loss along {label}"}, height=560, xaxis={"title": {"text": label}})
    fig.update_yaxes(title_text="loss", secondary_y=False, type="log" if log_default and can_log else "linear")
    fig.update_yaxes(title_text="accuracy", secondary_y=True)
    if can_log:
        fig.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "x": 0.0, "y": 1.1,
                                        "xanchor": "left", "active": 1 if log_default else 0, "buttons": [
                                            {"label": "linear scale", "method": "relayout",
                                             "args": [{"yaxis.type": "linear"}]},
                                            {"label": "log scale", "method": "relayout",
                                             "args": [{"yaxis.type": "log"}]}]}])
    out = [("loss-line", fig)]
    for name, values in metrics.items():
        if name in ("loss", "accuracy") or is_stderr(name):
            continue
        other = go.Figure(go.Scatter(x=x, y=capped(values, None, auto=False), mode="lines+markers", name=name,
                                     error_y=error_bars(metrics, name)))
        other.update_layout(title={"text": f"{title}: {name}"}, height=420, xaxis={"title": {"text": label}},
                            yaxis={"title": {"text": name}})
        out.append((f"line-{name.replace('/', '-')}", other))
    return out


def error_bars(metrics: Mapping[str, np.ndarray], name: str) -> dict[str, Any] | None:
    """plotly error bars of +-BAND standard errors of a metric (its <name>_stderr), or None when it has none."""
    se = metrics.get(stderr_name(name))
    if se is None:
        return None
    bars = BAND * np.asarray(se, dtype=float)
    return {"type": "data", "array": np.where(np.isfinite(bars), bars, np.nan), "visible": True, "thickness": 1}


def block_figures(blocks: Mapping[str, Any]) -> list[tuple[str, go.Figure]]:
    """Per-block curvature (hessian.blocks, as Spectrum.numbers()["blocks"] holds it): each block's lambda_max and
    lambda_min with their Ritz residual bounds, and its trace with +-BAND standard errors."""
    names = [str(n) for n in blocks["names"]]

    def bars(key: str, err: str, scale: float = 1.0) -> go.Bar:
        return go.Bar(x=names, y=blocks[key], name=key,
                      error_y={"type": "data", "array": [scale * e for e in blocks[err]], "visible": True})

    eig = go.Figure([bars("lambda_max", "lambda_max_bound"), bars("lambda_min", "lambda_min_bound")])
    eig.update_layout(barmode="group", height=420, title={"text": f"Per-{blocks['kind']} eigenvalues (Ritz bounds)"},
                      yaxis={"title": {"text": "eigenvalue"}}, legend={"orientation": "h", "y": -0.3})
    trace = go.Figure([bars("trace", "trace_stderr", BAND)])
    trace.update_layout(height=420, title={"text": f"Per-{blocks['kind']} trace (+-{BAND:g} standard errors)"},
                        yaxis={"title": {"text": "trace"}})
    return [("blocks-eigenvalues", eig), ("blocks-trace", trace)]


def comparison_figure(runs: Mapping[str, tuple[Sequence[np.ndarray], np.ndarray]], metric: str,
                      clip: float | None, log_scale: bool) -> go.Figure:
    """One metric of several runs side by side on one shared colour scale (2D), or as lines on one axes (1D)."""
    cap = common.cap_value([v for _, v in runs.values()], clip, auto=metric == "loss")
    dims = {len(c) for c, _ in runs.values()}
    if dims == {1}:
        fig = go.Figure([go.Scatter(x=np.asarray(c[0], dtype=float), y=capped(v, cap, auto=False), name=n,
                                    mode="lines+markers") for n, (c, v) in runs.items()])
        fig.update_yaxes(title_text=metric, type="log" if log_scale else "linear")
        return fig.update_layout(height=480, title={"text": metric})
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=list(runs), shared_yaxes=True)
    values = {n: capped(v, cap, auto=False) for n, (_, v) in runs.items()}
    positive = all(np.nanmin(v) > 0 for v in values.values() if np.isfinite(v).any())
    use_log = log_scale and positive
    for k, (name, (coords, _)) in enumerate(runs.items(), start=1):
        z = values[name].T
        fig.add_trace(go.Contour(x=np.asarray(coords[0], dtype=float), y=np.asarray(coords[1], dtype=float),
                                 z=np.log10(z) if use_log else z, coloraxis="coloraxis", name=name,
                                 customdata=z, hovertemplate=f"{name}<br>d1 = %{{x:.4g}}<br>d2 = %{{y:.4g}}<br>"
                                 f"{metric} = %{{customdata:.5g}}<extra></extra>"), row=1, col=k)
    bar: dict[str, Any] = {"title": {"text": f"log10 {metric}" if use_log else metric}}
    fig.update_layout(coloraxis={"colorscale": SCALE, "colorbar": bar}, height=460,
                      width=max(700, 420 * len(runs)), title={"text": metric})
    return fig


def page(title: str, sections: Sequence[tuple[str, str]], figures: Sequence[tuple[str, go.Figure]],
         banner: str = "") -> str:
    """One self-contained HTML page: plotly's JavaScript inlined once (when it has figures), then HTML sections,
    then each figure."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style>",
             f"<script type='text/javascript'>{get_plotlyjs()}</script>" if figures else "", "</head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    parts += [f"<section id='{html.escape(head.lower().replace(' ', '-'))}'><h2>{html.escape(head)}</h2>{body}"
              "</section>" for head, body in sections]
    for div, fig in figures:
        parts.append(f"<div class='figure' id='{div}'>"
                     f"{fig.to_html(full_html=False, include_plotlyjs=False, div_id=div + '-plot')}</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;margin:1.5em auto;max-width:1150px;padding:0 1em;color:#222}"
         "h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc}"
         ".banner{background:#fff3cd;border:1px solid #e0c060;padding:.5em}"
         "table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}"
         "td.num{text-align:right;font-family:monospace}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
         ".figure{margin:1em 0;overflow:hidden}img{max-width:100%;border:1px solid #eee;margin:.3em 0}")


def write_page(path: Path, text: str) -> Path:
    """Write a page (its folder created) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

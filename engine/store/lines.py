"""summary.json of an N-line store (layout "lines": a direction axis by a distance axis): the basin radius of every
line on each side and its distribution across the lines (Chen et al. 2025's "most-case" landscape).

Radius: along line i, from its centre (the point nearest x = 0, theta* itself when x = 0 is on the grid) outwards,
the distance at which the loss first rises above centre + summary.basin_rise, linearly interpolated between the
last point at or below that threshold and the first above it. A side that never rises so far within the grid is
open: its radius is beyond the grid (+inf in the order statistics, None in per_line); a side crossing into a
non-finite loss takes that point's distance, with no standard error.

Error of a radius, from the per-point standard errors (delta method on the interpolation, the three losses taken
as independent: conservative, they are means over the same items): with h the spacing, a and b the points either
side of the crossing and T = L_c + rise, r = x_a + h (T - L_a) / (L_b - L_a), so dr/dL_c = h / D,
dr/dL_a = -h (L_b - T) / D^2, dr/dL_b = -h (T - L_a) / D^2 (D = L_b - L_a). A quantile q of the radii is
linear interpolation between order statistics (numpy's default): (1 - f) r_(k) + f r_(k+1), k + f = q (n - 1), and
its error is sqrt(((1 - f) se_(k))^2 + (f se_(k+1))^2), each radius's own error (the order itself held fixed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.store.read import Surface

QUANTILES = {"min": 0.0, "q1": 0.25, "median": 0.5, "q3": 0.75}


def number(v: Any) -> float | None:
    """A finite float for summary.json, None for NaN or infinity."""
    f = float(v)
    return f if math.isfinite(f) else None


def side_radius(x: np.ndarray, loss: np.ndarray, se: np.ndarray | None, centre: int, step: int,
                rise: float) -> tuple[float, float | None]:
    """(radius, its standard error) on one side (step +1 or -1) of one line; (inf, None) when open, (nan, None)
    when a point on the way is not computed."""
    loss = np.asarray(loss, dtype=np.float64)  # float32 in the store: the threshold and crossing in float64
    threshold = loss[centre] + rise
    a = centre
    while 0 <= a + step < len(x):
        b = a + step
        if np.isnan(loss[b]):
            return math.nan, None
        if not np.isfinite(loss[b]):
            return abs(float(x[b] - x[centre])), None
        if loss[b] > threshold:
            h, d = float(x[b] - x[a]), float(loss[b] - loss[a])
            crossing = float(x[a]) + h * float(threshold - loss[a]) / d
            if se is None:
                return abs(crossing - float(x[centre])), None
            grads = (h / d, -h * float(loss[b] - threshold) / d**2, -h * float(threshold - loss[a]) / d**2)
            var = sum((g * float(s)) ** 2 for g, s in zip(grads, (se[centre], se[a], se[b])))
            return abs(crossing - float(x[centre])), math.sqrt(var)
        a = b
    return math.inf, None


def quantile(values: list[float], errors: list[float | None], q: float) -> tuple[float | None, float | None]:
    """The q-quantile of values (numpy's linear method; +inf for open sides) and its error from the radii's errors;
    None where it falls on an open side, or (for the error) on a radius without one."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    pos = q * (len(values) - 1)
    k, f = math.floor(pos), pos - math.floor(pos)
    picked = [(order[k], 1.0 - f)] + ([(order[k + 1], f)] if f > 0 else [])
    if any(not math.isfinite(values[i]) for i, _ in picked):
        return None, None
    value = sum(w * values[i] for i, w in picked)
    errs = [errors[i] for i, _ in picked]
    if any(e is None for e in errs):
        return value, None
    return value, math.sqrt(sum((w * float(e)) ** 2 for (_, w), e in zip(picked, errs) if e is not None))


def radius_stats(values: list[float], errors: list[float | None]) -> dict[str, Any]:
    """Median, quartiles and min of the radii with their errors, and how many sides are open (beyond the grid)."""
    known = [(v, e) for v, e in zip(values, errors) if not math.isnan(v)]
    out: dict[str, Any] = {"count": len(known), "open": sum(1 for v, _ in known if math.isinf(v))}
    for name, q in QUANTILES.items():
        value, error = quantile([v for v, _ in known], [e for _, e in known], q) if known else (None, None)
        out[name], out[f"{name}_stderr"] = value, error
    return out


def summarize_lines(surface: Surface, basin_rise: float = 0.5) -> dict[str, Any]:
    """summary.json's numbers of an N-line store: completeness, centre, minimum, every line's radius on each side and
    their distribution (plus, minus, and both sides pooled)."""
    loss, (index, x) = surface.metrics["loss"], surface.coords
    se = surface.stderr("loss")
    plain = surface.plain()
    centre = int(np.argmin(np.abs(x)))
    missing = [list(map(int, t)) for t in np.argwhere(~surface.done)]
    finite = np.isfinite(loss)
    out: dict[str, Any] = {
        "complete": not missing, "missing_tiles": missing,
        "points_computed": int((~np.isnan(loss)).sum()), "points_total": int(loss.size),
        "nonfinite_points": int((~finite & ~np.isnan(loss)).sum()),
        "center": {"coords": [0.0, float(x[centre])], **{m: number(surface.metrics[m][0, centre]) for m in plain}},
        "lines": {"count": len(index), "seeds": surface.attrs.get("line_seeds")},
    }
    if finite.any():
        i, j = np.unravel_index(np.nanargmin(np.where(finite, loss, np.nan)), loss.shape)
        out["minimum"] = {"coords": [float(index[i]), float(x[j])],
                          **{m: number(surface.metrics[m][i, j]) for m in plain}}
    sides: dict[str, tuple[list[float], list[float | None]]] = {"plus": ([], []), "minus": ([], [])}
    for line in range(len(index)):
        for name, step in (("plus", 1), ("minus", -1)):
            r, e = side_radius(x, loss[line], None if se is None else se[line], centre, step, basin_rise)
            sides[name][0].append(r)
            sides[name][1].append(e)
    both = (sides["plus"][0] + sides["minus"][0], sides["plus"][1] + sides["minus"][1])
    out["radius"] = {
        "rise": basin_rise,
        "per_line": {name: [number(v) if math.isfinite(v) else None for v in values]
                     for name, (values, _) in sides.items()},
        "per_line_stderr": {name: errors for name, (_, errors) in sides.items()},
        "per_line_open": {name: [math.isinf(v) for v in values] for name, (values, _) in sides.items()},
        **{name: radius_stats(*pair) for name, pair in (*sides.items(), ("both", both))},
    }
    width = [v for v in (np.array(sides["plus"][0]) + np.array(sides["minus"][0])) if np.isfinite(v)]
    out["basin"] = {"rise": basin_rise, "x": {"width": float(np.median(width)) if width else None,
                                              "of": "median over the lines of both radii's sum"}}
    out["error_bars"] = ("no per-item values: no error bars" if se is None else
                         "radius errors from the per-point standard errors")
    return out

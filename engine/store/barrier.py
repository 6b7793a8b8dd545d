"""The barrier of a path between two models (Frankle et al. 2020): how far the loss along the path rises above the
straight line between its end values, max over t of L(t) - ((1 - t) L(0) + t L(1)), and the same for a metric that
should stay high (accuracy: its drop below the line). Read from a 1D path run over t (direction=interpolation or a
curve), whose points at t = 0 and t = 1 are the two models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.store.read import Surface

PATH_KINDS = ("interpolation", "curve")  # direction kinds whose 1D runs are paths from model A (t=0) to B (t=1)
HIGHER_IS_BETTER = ("accuracy",)  # metrics whose barrier is the drop below the line, not the rise above it
CONSERVATIVE = ("conservative: the three points are means over the same items, so their errors are as a rule "
                "positively correlated; the standard error adds them in quadrature as if independent")


def is_path(surface: Surface) -> bool:
    """Whether the store is a 1D run along a path from model A (t = 0) to model B (t = 1)."""
    kind = surface.attrs.get("config", {}).get("direction", {}).get("kind")
    return kind in PATH_KINDS and len(surface.coords) == 1


def barrier(t: np.ndarray, values: np.ndarray, stderr: np.ndarray | None = None,
            higher_is_better: bool = False) -> dict[str, Any]:
    """The barrier of one metric along t: max over 0 <= t <= 1 of the rise above (or, higher_is_better, the drop
    below) the line between the values at t = 0 and t = 1, with the t of the maximum; with per-point standard errors,
    its standard error (the three points' errors added in quadrature, weighted (1, 1 - t, t)), z and |z| > 2.

    Computed in float64; None values where t = 0 or t = 1 is not on the grid or not computed."""
    t, v = np.asarray(t, np.float64), np.asarray(values, np.float64)
    ends = [np.flatnonzero(t == e) for e in (0.0, 1.0)]
    empty: dict[str, Any] = {"value": None, "t": None, "stderr": None, "z": None, "significant": None}
    if any(len(e) == 0 for e in ends):
        return {**empty, "note": "t = 0 and t = 1 must be grid points: set grid.x so that both lie on the grid"}
    i0, i1 = int(ends[0][0]), int(ends[1][0])
    inside = (t >= 0.0) & (t <= 1.0) & np.isfinite(v)
    if not (np.isfinite(v[i0]) and np.isfinite(v[i1])):
        return {**empty, "note": "the loss at t = 0 or t = 1 is not computed (yet)"}
    line = (1.0 - t) * v[i0] + t * v[i1]
    rise = np.where(inside, (line - v) if higher_is_better else (v - line), -np.inf)
    k = int(np.argmax(rise))
    out: dict[str, Any] = {"value": float(rise[k]), "t": float(t[k]), "stderr": None, "z": None, "significant": None,
                           "at_t": float(v[k]), "line_at_t": float(line[k]), "start": float(v[i0]), "end": float(v[i1])}
    if stderr is not None:
        s = np.asarray(stderr, np.float64)
        se = float(np.sqrt(s[k] ** 2 + ((1.0 - t[k]) * s[i0]) ** 2 + (t[k] * s[i1]) ** 2))
        if np.isfinite(se):
            out["stderr"] = se
            out["z"] = out["value"] / se if se > 0 else None
            out["significant"] = None if out["z"] is None else bool(abs(out["z"]) > 2)
            out["note"] = CONSERVATIVE
    return out


def barriers(surface: Surface) -> dict[str, Any]:
    """summary.json's barrier of a path run: one entry per metric with standard errors (loss, accuracy, ...), each
    as `barrier` gives it; accuracy's is its drop."""
    t = surface.coords[0]
    return {m: barrier(t, surface.metrics[m], surface.stderr(m), m in HIGHER_IS_BETTER)
            for m in surface.plain() if surface.stderr(m) is not None or m == "loss"}

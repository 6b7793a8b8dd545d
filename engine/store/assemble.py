"""Assembler: reads the stitched surfaces, lists missing tiles and derives the numbers of summary.json.

Numbers: the loss and its metrics (accuracy, ...) at the center (the point nearest the origin, theta*), the
minimum and where it is, the basin width along each axis through the center at loss <= center + rise, and convexity
figures from finite differences of the surface (Li et al.'s |lambda_min / lambda_max|, on the plane); the error bars
(basin depth in standard errors, minimum against centre) where the store holds standard errors; with a Hessian
curvature map or spectrum in the store, their numbers too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, SupportsIndex

import numpy as np

from engine.curvature.sharpness import surface_sharpness, valley_asymmetry
from engine.store.barrier import barriers, is_path
from engine.store.lines import summarize_lines
from engine.store.read import Surface, read_surface

NO_ERROR_BARS = "no per-item values: no error bars"  # summary.json's error_bars for a store without standard errors
CORRELATED = ("conservative: both points are means over the same items, so their errors are as a rule positively "
              "correlated and the standard error of their difference is smaller than this one, which adds the two in "
              "quadrature as if they were independent")


def summarize(surface: Surface, basin_rise: float = 0.5, sharpness_radius: float = 0.25) -> dict[str, Any]:
    """Derive the summary numbers of a (possibly partial) surface; NaN marks points not computed."""
    loss, coords = surface.metrics["loss"], surface.coords
    plain = surface.plain()  # the loss's own metrics, loss first (no standard errors, no curvature maps)
    missing = [list(map(int, t)) for t in np.argwhere(~surface.done)]
    center = tuple(int(np.argmin(np.abs(c))) for c in coords)
    finite = np.isfinite(loss)
    out: dict[str, Any] = {
        "complete": not missing,
        "missing_tiles": missing,
        "points_computed": int((~np.isnan(loss)).sum()),
        "points_total": int(loss.size),
        "nonfinite_points": int((~finite & ~np.isnan(loss)).sum()),
        "center": {"coords": _coords(coords, center), **{m: _num(surface.metrics[m][center]) for m in plain}},
    }
    imin: tuple[int, ...] | None = None
    if finite.any():
        imin = tuple(map(int, np.unravel_index(np.nanargmin(np.where(finite, loss, np.nan)), loss.shape)))
        out["minimum"] = {"coords": _coords(coords, imin), **{m: _num(surface.metrics[m][imin]) for m in plain}}
        if "accuracy" in surface.metrics:
            out["max_accuracy"] = _num(np.nanmax(np.where(finite, surface.metrics["accuracy"], np.nan)))
    out["basin"] = {
        "rise": basin_rise,
        "threshold": _num(loss[center] + basin_rise),
        **{axis: basin_width(loss, coords, center, k, basin_rise) for k, axis in enumerate(("x", "y")[: loss.ndim])},
    }
    out["convexity"] = convexity(loss, coords)
    out["sharpness"] = {"radius": sharpness_radius, "surface": surface_sharpness(loss, coords, sharpness_radius),
                        "epsilon": surface.attrs.get("epsilon_sharpness"),
                        "adaptive": _results(surface.attrs.get("adaptive_sharpness")),
                        "asymmetry": valley_asymmetry(loss, coords)}
    out.update(error_bars(surface, center, imin))
    if is_path(surface):
        out["barrier"] = barriers(surface)
    if "hessian/ratio" in surface.metrics:
        out["curvature"] = curvature_summary(surface, center)
    return out


def _results(computed: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result kept in the store's attributes without the settings it was cached under (the result already names
    them: radius, norm, steps, ...), so summary.json and the report list each setting once."""
    return None if computed is None else {k: v for k, v in computed.items() if k != "settings"}


def error_bars(surface: Surface, center: tuple[int, ...], imin: tuple[int, ...] | None) -> dict[str, Any]:
    """error_bars, basin_depth_se and minimum_vs_centre of summary.json from the `<metric>_stderr` arrays.

    error_bars: the standard errors at the centre and the minimum and their median over the grid, per metric (or
    NO_ERROR_BARS when the store has none). basin_depth_se: how deep the basin is in standard errors, (L_rim -
    L_centre) / sqrt(se_rim^2 + se_centre^2), where the rim point is the lowest finite point on the grid's edge
    (where the loss first spills out of the swept region). minimum_vs_centre: L_min - L_centre, its standard error
    sqrt(se_min^2 + se_centre^2), z = difference / standard error, and whether |z| > 2. Both pool the two points'
    standard errors as if independent, which is conservative (CORRELATED, the note of minimum_vs_centre).
    """
    se = surface.stderr("loss")
    if se is None:
        return {"error_bars": NO_ERROR_BARS, "basin_depth_se": None, "minimum_vs_centre": None}
    loss, coords = surface.metrics["loss"], surface.coords
    ses = {m: a for m in surface.plain() if (a := surface.stderr(m)) is not None}
    bars: dict[str, Any] = {"metrics": list(ses), "center": {m: _num(a[center]) for m, a in ses.items()}}
    if imin is not None:
        bars["minimum"] = {m: _num(a[imin]) for m, a in ses.items()}
    bars["median"] = {m: _median(a) for m, a in ses.items()}
    rim = rim_point(loss)
    depth = None
    if rim is not None:
        bars["rim"] = {"coords": _coords(coords, rim), "loss": _num(loss[rim]), "loss_stderr": _num(se[rim])}
        depth = _z(loss[rim] - loss[center], se[rim], se[center])["z"]
    versus = None
    if imin is not None:
        versus = _z(loss[imin] - loss[center], se[imin], se[center])
        versus["significant"] = None if versus["z"] is None else bool(abs(versus["z"]) > 2)
        versus["note"] = CORRELATED
    return {"error_bars": bars, "basin_depth_se": depth, "minimum_vs_centre": versus}


def rim_point(loss: np.ndarray) -> tuple[int, ...] | None:
    """The grid's edge point (an end of a line, the border of a plane) with the lowest finite loss, or None."""
    edge = np.zeros(loss.shape, bool)
    for axis in range(loss.ndim):
        index: list[Any] = [slice(None)] * loss.ndim
        index[axis] = [0, -1]
        edge[tuple(index)] = True
    ok = edge & np.isfinite(loss)
    if not ok.any():
        return None
    return tuple(map(int, np.unravel_index(np.nanargmin(np.where(ok, loss, np.nan)), loss.shape)))


def _z(difference: Any, se_a: Any, se_b: Any) -> dict[str, Any]:
    """A difference of two means, its (independent-errors) standard error and their ratio; None where undefined."""
    d, se = _num(difference), _num(np.hypot(np.float64(se_a), np.float64(se_b)))
    z = d / se if d is not None and se is not None and se > 0 else None
    return {"difference": d, "stderr": se, "z": z}


def _median(values: np.ndarray) -> float | None:
    known = values[np.isfinite(values)]
    return _num(np.median(known)) if known.size else None


def curvature_summary(surface: Surface, center: tuple[int, ...]) -> dict[str, Any]:
    """The Hessian curvature map's numbers: values at the center, and how much of the grid is non-convex.

    A point counts as non-convex where |lambda_min / lambda_max| > 0.1. Li et al. 2018 read their convexity
    maps on the same scale.
    """
    top, bottom, ratio = (surface.metrics[f"hessian/{k}"] for k in ("lambda_max", "lambda_min", "ratio"))
    known = np.isfinite(ratio)
    return {
        "center": {"lambda_max": _num(top[center]), "lambda_min": _num(bottom[center]), "ratio": _num(ratio[center])},
        "points": int(known.sum()),
        "median_ratio": _num(np.median(ratio[known])) if known.any() else None,
        "nonconvex_fraction": _num((ratio[known] > 0.1).mean()) if known.any() else None,
        "max_lambda_max": _num(np.nanmax(np.where(np.isfinite(top), top, np.nan))) if np.isfinite(top).any() else None,
    }


def basin_width(
    loss: np.ndarray, coords: tuple[np.ndarray, ...], center: tuple[int, ...], axis: int, rise: float
) -> dict[str, Any]:
    """Width of the connected run of points through the center along `axis` where loss <= center + rise.

    'open' is true when the run reaches the edge of the grid (the basin is wider than the grid shows).
    """
    line = loss[tuple(slice(None) if k == axis else c for k, c in enumerate(center))]
    c, thr = center[axis], loss[center] + rise
    if not np.isfinite(thr):
        return {"width": None, "open": None}
    inside = np.isfinite(line) & (line <= thr)
    lo, hi = c, c
    while lo > 0 and inside[lo - 1]:
        lo -= 1
    while hi < len(line) - 1 and inside[hi + 1]:
        hi += 1
    x = coords[axis]
    return {"width": float(x[hi] - x[lo]), "from": float(x[lo]), "to": float(x[hi]),
            "open": bool(lo == 0 or hi == len(line) - 1)}


def convexity(loss: np.ndarray, coords: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Finite-difference curvature of the surface at interior points: how much of it is non-convex.

    nonconvex_fraction: share of points whose (1x1 or 2x2) Hessian has a negative eigenvalue;
    mean_abs_eig_ratio: mean of |min(lambda_min, 0) / lambda_max| (0 where convex); local_minima: count.
    """
    if min(loss.shape) < 3 or not all(len(c) > 1 for c in coords):
        return {"nonconvex_fraction": None, "mean_abs_eig_ratio": None, "local_minima": None}
    h = [float(c[1] - c[0]) for c in coords]
    f = loss.astype(np.float64)
    if loss.ndim == 1:
        lam_min = lam_max = (f[2:] - 2 * f[1:-1] + f[:-2]) / h[0] ** 2
    else:
        fxx = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / h[0] ** 2
        fyy = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / h[1] ** 2
        fxy = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * h[0] * h[1])
        mid, rad = (fxx + fyy) / 2, np.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
        lam_min, lam_max = mid - rad, mid + rad
    ok = np.isfinite(lam_min) & np.isfinite(lam_max)
    if not ok.any():
        return {"nonconvex_fraction": None, "mean_abs_eig_ratio": None, "local_minima": None}
    lmin, lmax = lam_min[ok], lam_max[ok]
    scale = np.abs(lmax).max() or 1.0
    ratio = np.abs(np.minimum(lmin, 0.0)) / np.maximum(np.abs(lmax), 1e-12 * scale)
    return {
        "nonconvex_fraction": float((lmin < -1e-9 * scale).mean()),
        "mean_abs_eig_ratio": float(np.minimum(ratio, 1.0).mean()),
        "local_minima": local_minima(loss),
    }


def local_minima(loss: np.ndarray) -> int:
    """Number of finite points strictly below all their finite neighbours (8-neighbourhood in 2D)."""
    f = np.where(np.isfinite(loss), loss, np.inf).astype(np.float64)
    padded = np.pad(f, 1, constant_values=np.inf)
    is_min = np.isfinite(f)
    for shift in np.ndindex(*(3,) * f.ndim):
        if all(s == 1 for s in shift):
            continue
        neighbour = padded[tuple(slice(s, s + n) for s, n in zip(shift, f.shape))]
        is_min &= f < neighbour
    return int(is_min.sum())


def assemble(store_path: str | Path, basin_rise: float = 0.5, out: str | Path | None = None,
             sharpness_radius: float = 0.25) -> dict[str, Any]:
    """Read a store, summarize it and write summary.json beside it (or at `out`)."""
    from engine.store.spectra import read_spectrum

    surface = read_surface(store_path)
    if surface.attrs.get("layout") == "lines":  # N random lines: the radius distribution (engine/store/lines.py)
        summary = {"store": str(store_path), **summarize_lines(surface, basin_rise)}
    else:
        summary = {"store": str(store_path), **summarize(surface, basin_rise, sharpness_radius)}
    if "auto_range" in surface.attrs:  # grid.x=auto: the ranges chosen and how (engine/app/autogrid.py)
        summary["auto_range"] = surface.attrs["auto_range"]
    spectrum = read_spectrum(store_path)
    if spectrum is not None:
        summary["spectrum"] = spectrum.numbers()
    out = Path(out) if out else Path(store_path).parent / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _num(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _coords(coords: tuple[np.ndarray, ...], idx: tuple[SupportsIndex, ...]) -> list[float]:
    return [float(c[i]) for c, i in zip(coords, idx)]

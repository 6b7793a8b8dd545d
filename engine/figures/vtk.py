"""A store as VTK XML files for ParaView: the plane as a structured grid whose height is the loss (surface.vts), a
line as a one-row structured grid (line.vts), and a PCA run's trajectory as a polyline on the surface
(trajectory.vtu). Every metric rides along as point data, so ParaView can colour and threshold by it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pyevtk.hl import gridToVTK, polyLinesToVTK

from engine.core.errors import UserError
from engine.figures.select import complete_surface, select_metrics, store_path
from engine.store.read import read_array


def vtk_name(metric: str) -> str:
    """A metric's point-data name: '/' (hessian/lambda_max) would read as a path in ParaView's array lists."""
    return metric.replace("/", "_")


def height(loss: np.ndarray, log: bool = False) -> np.ndarray:
    """The loss as a float64 height: NaN and -inf stay NaN (not computed), +inf becomes the largest finite loss; with
    log, values <= 0 are raised to the smallest positive loss (as the figures do) before log10."""
    z = np.array(loss, dtype=np.float64)
    z[np.isneginf(z)] = np.nan
    finite = np.isfinite(z)
    z[np.isposinf(z)] = z[finite].max() if finite.any() else np.nan
    if log:
        positive = z[np.isfinite(z) & (z > 0)]
        known = ~np.isnan(z)
        z[known] = np.log10(np.maximum(z[known], positive.min() if positive.size else 1.0))
    return z


def export_vtk(store_path_or_run: str | Path, out_dir: str | Path, *, log: bool = False,
               metrics: Sequence[str] | None = None) -> list[Path]:
    """Write the store's complete level (full grid, else the coarse preview) as surface.vts (2D) or line.vts (1D),
    plus trajectory.vtu when the store holds one; returns the files. Every check runs before the first write.

    Point data: `loss` (raw) and the metrics asked for (all by default), '/' in names replaced by '_'. The height
    (z on a plane, y on a line) is the loss, or log10 of it with log."""
    store = store_path(store_path_or_run)
    surface, _ = complete_surface(store)
    if surface.attrs.get("layout") == "lines":
        raise UserError(f"{store} holds {len(surface.coords[0])} random lines, not a surface: landscape-export writes "
                        "planes and single lines; read the lines with xarray.open_zarr or landscape-plot")
    names = select_metrics(surface, metrics, store)
    trajectory = read_array(store, "trajectory/coords") if len(surface.coords) == 2 else None
    loss = surface.metrics["loss"]
    z = height(loss, log)
    point_data = {vtk_name(m): surface.metrics[m] for m in dict.fromkeys(["loss", *names])}
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot write the VTK files into {out}: {err.strerror}") from None
    if len(surface.coords) == 1:
        x = np.asarray(surface.coords[0], dtype=np.float64)
        files = [_grid(out / "line", x, z, np.zeros_like(x), point_data)]
    else:
        xx, yy = np.meshgrid(*(np.asarray(c, dtype=np.float64) for c in surface.coords), indexing="ij")
        files = [_grid(out / "surface", xx, yy, z, point_data)]
    if trajectory is not None:
        files.append(_trajectory(out / "trajectory", surface.coords, z, np.asarray(trajectory, dtype=np.float64)))
    return files


def _grid(path: Path, x: np.ndarray, y: np.ndarray, z: np.ndarray, point_data: dict[str, np.ndarray]) -> Path:
    """A structured grid of arr[i(, j)] points: pyevtk takes 3D arrays and writes them x fastest (VTK's order)."""
    def cube(a: np.ndarray) -> np.ndarray:
        return np.asfortranarray(a.reshape(a.shape + (1,) * (3 - a.ndim)))

    return Path(gridToVTK(str(path), cube(x), cube(y), cube(z),
                          pointData={k: cube(v) for k, v in point_data.items()}))


def _trajectory(path: Path, coords: Sequence[np.ndarray], z: np.ndarray, points: np.ndarray) -> Path:
    """One polyline through the projected checkpoints, lifted onto the surface, with point data `epoch` (0..n-1)."""
    x, y = (np.ascontiguousarray(points[:, k]) for k in range(2))
    lifted = np.array([surface_at(coords, z, px, py) for px, py in zip(x, y)])
    epoch = np.arange(len(points), dtype=np.float64)
    return Path(polyLinesToVTK(str(path), x, y, lifted, pointsPerLine=np.array([len(points)]),
                               pointData={"epoch": epoch}))


def surface_at(coords: Sequence[np.ndarray], z: np.ndarray, px: float, py: float) -> float:
    """z bilinearly interpolated at (px, py), clamped to the grid; where a corner is NaN, the nearest finite grid
    value (0 when there is none), so the polyline never gets a NaN vertex."""
    (i0, i1, wx), (j0, j1, wy) = _bracket(coords[0], px), _bracket(coords[1], py)
    value = ((1 - wx) * (1 - wy) * z[i0, j0] + wx * (1 - wy) * z[i1, j0]
             + (1 - wx) * wy * z[i0, j1] + wx * wy * z[i1, j1])
    if np.isfinite(value):
        return float(value)
    finite = np.argwhere(np.isfinite(z))
    if not finite.size:
        return 0.0
    xs, ys = (np.asarray(c, dtype=np.float64) for c in coords)
    i, j = finite[np.argmin((xs[finite[:, 0]] - px) ** 2 + (ys[finite[:, 1]] - py) ** 2)]
    return float(z[i, j])


def _bracket(axis: np.ndarray, v: float) -> tuple[int, int, float]:
    """The grid indices around v on a sorted axis and v's weight toward the upper one (v clamped to the axis)."""
    n = len(axis)
    if n == 1:
        return 0, 0, 0.0
    v = float(np.clip(v, axis[0], axis[-1]))
    hi = int(np.clip(np.searchsorted(axis, v, side="right"), 1, n - 1))
    lo = hi - 1
    return lo, hi, float((v - axis[lo]) / (axis[hi] - axis[lo]))

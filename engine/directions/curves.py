"""Curves between two minima (Garipov et al. 2018): a Bezier curve or a polygonal chain from model A (theta*, t = 0)
through trained bends to model B (t = 1), as directions and a coefficient map, so a curve run is a 1D run over t.

With w_0 = A, w_1..w_n the bends and w_{n+1} = B, a curve is phi(t) = sum_k b_k(t) w_k with weights b_k summing to 1
(Bernstein polynomials, or piecewise-linear hats), so phi(t) = A + sum_{k >= 1} b_k(t) (w_k - A): the directions are
w_k - A and the coefficients of a grid point t are b_1(t), ..., b_{n+1}(t). A quadratic Bezier (one bend theta) is
A + 2t(1 - t)(theta - A) + t^2 (B - A). With grid=plane, the plane through A, B and the bend, with the curve on it.
"""

from __future__ import annotations

from math import comb

import numpy as np
import torch
from torch import nn

from engine.core.errors import UserError
from engine.directions.kinds import CoefficientMap, Directions
from engine.directions.trajectory import plane_through
from engine.sources.batchnorm import batchnorm_layers
from engine.sources.checkpoints import State

CURVE_POINTS = 101  # points of the curve drawn on its plane


def curve_weights(kind: str, bends: int, t: np.ndarray) -> np.ndarray:
    """[len(t), bends + 1]: the weights b_1(t), ..., b_{n+1}(t) of the bends and B (A's is 1 minus their sum).

    bezier: the Bernstein polynomials of degree n + 1 (they extend smoothly beyond [0, 1]); polychain: the straight
    segments between consecutive points w_k at t = k / (n + 1), the first and last continued beyond [0, 1]."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    n = bends + 1
    out = np.zeros((len(t), n))
    if kind == "bezier":
        for k in range(1, n + 1):
            out[:, k - 1] = comb(n, k) * t**k * (1.0 - t) ** (n - k)
        return out
    segment = np.clip(np.floor(t * n), 0, n - 1).astype(int)
    u = t * n - segment
    rows = np.arange(len(t))
    start = segment >= 1  # w_0 = A carries no coefficient
    out[rows[start], segment[start] - 1] += 1.0 - u[start]
    out[rows, segment] += u
    out[t == 1.0] = np.eye(n)[-1]  # exactly B's coefficients at t = 1 (the Perturber then sets B bit for bit)
    return out


def curve_map(kind: str, bends: int) -> CoefficientMap:
    """The coefficient map of a 1D curve run: grid points t [n, 1] -> curve_weights [n, bends + 1]."""
    def coefficients(coords: np.ndarray) -> np.ndarray:
        return curve_weights(kind, bends, coords[:, 0])
    return coefficients


def check_batchnorm(model: nn.Module, recalibrate: bool) -> None:
    """A curve's points have no running statistics of their own: refuse a BatchNorm model without recalibration."""
    if batchnorm_layers(model) and not recalibrate:
        raise UserError("direction=curve on a model with BatchNorm needs eval.recalibrate_bn=true: the statistics "
                        "are recomputed at every t, as Garipov et al. do")


def curve_directions(kind: str, ndim: int, names: list[str], theta: list[torch.Tensor], end: State,
                     bends: list[State]) -> Directions:
    """The 1D run's directions w_k - A over the perturbed tensors (B - A last, B kept to be set bit for bit at t = 1)
    and its coefficient map; or (ndim 2, one bend) the orthonormal plane through A, B and the bend, the models
    marked and the curve as the drawn path."""
    a = {n: t.detach() for n, t in zip(names, theta)}
    b = {n: end[n].to(a[n].device, a[n].dtype) for n in names}
    if ndim == 2:
        on_cpu = {n: t.cpu() for n, t in a.items()}
        basis, coords = plane_through(names, on_cpu, {n: t.cpu() for n, t in b.items()},
                                      {n: bends[0][n].cpu() for n in names})
        points = np.array([coords["C"], coords["B"]], dtype=np.float64)
        t = np.linspace(0.0, 1.0, CURVE_POINTS)
        path = curve_weights(kind, 1, t) @ points
        directions = [[v.to(a[n].device, a[n].dtype) for n, v in zip(names, e)] for e in basis]
        return Directions(directions, markers={"A": [0.0, 0.0], "B": list(coords["B"]), "bend": list(coords["C"])},
                          axis_labels=["e1 (along B - A)", "e2 (towards the bend)"], trajectory=path)
    directions = [[w[n].to(a[n].device, a[n].dtype) - a[n] for n in names] for w in bends]
    directions.append([b[n] - a[n] for n in names])
    return Directions(directions, end=[b[n] for n in names], markers={"A": [0.0], "B": [1.0]},
                      axis_labels=[f"t along the trained {kind} curve (A at 0, B at 1)", ""],
                      coefficients=curve_map(kind, len(bends)))

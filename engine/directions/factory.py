"""The one place that turns direction.kind into directions: random, hessian and file directions are drawn, computed
or loaded raw and normalized here (and only here); interpolation, plane and pca keep the checkpoints' geometry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from torch import nn

from engine.config.schema import DirectionConfig
from engine.directions import checkpoints, curves
from engine.directions.kinds import Directions
from engine.directions.lines import line_directions
from engine.directions.vectors import PerturbedTensors, load_directions, normalize_all, seeded_normalized
from engine.sources.checkpoints import State

HessianAxes = Callable[[int], list[list[torch.Tensor]]]  # ndim -> the top ndim Hessian eigenvectors at theta*
CurveBends = Callable[[State], list[State]]  # model B -> the trained bends of the curve from theta* to B


def make_directions(d: DirectionConfig, model: nn.Module, target: PerturbedTensors, ndim: int, run_dir: Path,
                    hessian_axes: HessianAxes | None = None, progress: bool = False,
                    curve_bends: CurveBends | None = None, dtype: torch.dtype | None = None) -> Directions:
    """The `ndim` directions of direction.kind over the perturbed tensors, with their markers and labels; random
    ones are made in dtype (direction.dtype) tensor by tensor, so no float32 copy of them all is ever held.

    hessian_axes computes the top Hessian eigenvectors (direction=hessian only; it draws its own bar); pca reads
    this run's checkpoints/ unless direction.trajectory names another folder, with a bar over them when progress is on
    (callers pass it on rank 0 only); curve_bends trains (or reads) a curve's bends (direction=curve only).
    """
    theta, logged = target.theta, target.logged
    in_log = {n for n, m in zip(target.names, logged) if m}
    aligned_to = run_dir if d.align == "weights" else None  # the aligned B (and C) are saved there
    if d.kind == "interpolation":
        return checkpoints.interpolation(d.checkpoints[0], model, target.names, theta, in_log, aligned_to)
    if d.kind == "plane":
        return checkpoints.plane(list(d.checkpoints), model, target.names, theta, in_log, aligned_to)
    if d.kind == "curve":
        if curve_bends is None:
            raise ValueError("direction=curve needs curve_bends")
        end = checkpoints.other_state(d.checkpoints[0], model, "B", aligned_to)
        return curves.curve_directions(d.curve, ndim, target.names, theta, end, curve_bends(end))
    if d.kind == "pca":
        folder = Path(d.trajectory) if d.trajectory else run_dir / "checkpoints"
        return checkpoints.pca(folder, model, target.names, theta, in_log, progress)
    if d.kind == "random" and d.count > 1:
        return line_directions(d, target)
    coordinates = target.coordinates()
    if d.kind == "random":
        g = torch.Generator().manual_seed(d.seed)
        return Directions([list(seeded_normalized(g, coordinates, d.norm, d.ignore, logged, target.rows, dtype))
                           for _ in range(ndim)])
    if d.kind == "hessian":
        if hessian_axes is None:
            raise ValueError("direction=hessian needs hessian_axes")
        raw = hessian_axes(ndim)
    else:
        raw = load_directions(cast(str, d.path), target.names, theta, ndim)  # set: DirectionConfig checks it
    return Directions(normalize_all(raw, coordinates, d.norm, d.ignore, logged, target.rows))

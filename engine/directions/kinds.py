"""What every direction kind hands the run: the directions and what the store and figures show with them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

RANDOM_KINDS = ("random", "hessian", "file")  # drawn, computed or loaded, then normalized against theta*
CHECKPOINT_KINDS = ("interpolation", "plane", "pca")  # the checkpoints' own geometry: never normalized
KINDS = RANDOM_KINDS + CHECKPOINT_KINDS

# grid coordinates [n, ndim] -> direction coefficients [n, len(directions)]: a curve's (t) -> Bernstein weights, N
# lines' x -> x e_i; None: the coordinates are the coefficients (a line or a plane through theta*)
CoefficientMap = Callable[[np.ndarray], np.ndarray]


@dataclass
class Directions:
    """The directions (lists of tensors aligned with the perturbed tensors) and what goes with them into the store's
    attributes and arrays: markers at the models' coordinates, axis labels, the projected trajectory."""

    directions: list[list[torch.Tensor]]
    end: list[torch.Tensor] | None = None  # interpolation: model B, which the Perturber lerps to
    markers: dict[str, list[float]] = field(default_factory=dict)
    axis_labels: list[str] = field(default_factory=lambda: ["d1", "d2"])
    trajectory: np.ndarray | None = None  # pca: [checkpoints, 2] projected coordinates
    explained: list[float] | None = None  # pca: explained variance ratio of the two components
    coefficients: CoefficientMap | None = None  # grid coordinates -> coefficients over the directions (None: same)


def coefficients_at(coefficients: CoefficientMap | None, coords: np.ndarray, count: int) -> np.ndarray:
    """The direction coefficients [n, count] of the grid points coords [n, ndim] (coords as they are without a map);
    a map that returns another shape is refused, so a wrong map fails at once rather than moving the wrong weights."""
    if coefficients is None:
        return coords
    out = np.asarray(coefficients(np.asarray(coords, dtype=np.float64)), dtype=np.float64)
    if out.shape != (len(coords), count):
        raise ValueError(f"coefficient map gave shape {out.shape} for {len(coords)} points over {count} directions")
    return out


def in_dtype(made: Directions, dtype: torch.dtype) -> Directions:
    """The directions held in dtype (direction.dtype; bfloat16 halves them), converted one tensor at a time so the
    old and new copies never both exist whole; the interpolation's end point is kept as it is."""
    for direction in made.directions:
        for i, t in enumerate(direction):
            if t.is_floating_point() and t.dtype != dtype:
                direction[i] = t.to(dtype)
    return made

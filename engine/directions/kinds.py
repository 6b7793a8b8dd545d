"""What every direction kind hands the run: the directions and what the store and figures show with them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

RANDOM_KINDS = ("random", "hessian", "file")  # drawn, computed or loaded, then normalized against theta*
CHECKPOINT_KINDS = ("interpolation", "plane", "pca")  # the checkpoints' own geometry: never normalized
KINDS = RANDOM_KINDS + CHECKPOINT_KINDS


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


def in_dtype(made: Directions, dtype: torch.dtype) -> Directions:
    """The directions held in dtype (direction.dtype; bfloat16 halves them), converted one tensor at a time so the
    old and new copies never both exist whole; the interpolation's end point is kept as it is."""
    for direction in made.directions:
        for i, t in enumerate(direction):
            if t.is_floating_point() and t.dtype != dtype:
                direction[i] = t.to(dtype)
    return made

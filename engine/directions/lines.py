"""N independent random lines in one store (`direction=random grid=line direction.count=N`): Chen et al. 2025's
"most-case" landscape, the distribution over directions rather than one line.

Seeds: line i is drawn from direction.seed + i, alone (random_raw(..., 1, seed + i)), and filter-normalized as any
random direction, so line i of an N-line store is the one line of a `grid=line direction.seed=<seed + i>` run, and
N = 1 is today's line. The grid is (direction index i, distance x); its point (i, x) moves the weights to
theta* + x d_i (the coefficient map below, applied once by the point runner).

Memory: all N directions are held (each of the perturbed tensors' size); a count whose directions exceed
LINES_MEMORY_FACTOR x eval.memory_gb is refused in one line before any is drawn.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from engine.config.schema import DirectionConfig
from engine.core.errors import UserError
from engine.directions.kinds import Directions
from engine.directions.vectors import PerturbedTensors, normalize_all, random_raw

LINES_MEMORY_FACTOR = 4  # N directions may hold up to this many times eval.memory_gb before the count is refused
LINE_LABELS = ["line", "d"]  # the store's axis labels: the line's index, the distance along its direction


def line_seeds(d: DirectionConfig) -> list[int]:
    """The seed each line is drawn from: direction.seed + i for line i."""
    return [d.seed + i for i in range(d.count)]


def line_coefficients(coords: np.ndarray, count: int) -> np.ndarray:
    """Grid points (i, x) [n, 2] -> coefficients [n, count] over the N directions: x at column i, 0 elsewhere."""
    out = np.zeros((len(coords), count))
    out[np.arange(len(coords)), coords[:, 0].astype(np.int64)] = coords[:, 1]
    return out


def check_lines_fit(d: DirectionConfig, target: PerturbedTensors, memory_gb: float) -> None:
    """Refuse, before any is drawn, N directions whose bytes exceed LINES_MEMORY_FACTOR x eval.memory_gb."""
    size = torch.empty(0, dtype=getattr(torch, d.dtype)).element_size()
    need = d.count * sum(t.numel() for t in target.tensors) * size
    if need > LINES_MEMORY_FACTOR * memory_gb * 2**30:
        raise UserError(f"direction.count={d.count} holds {d.count} directions of the model's size, "
                        f"{need / 2**30:.1f} GB, over {LINES_MEMORY_FACTOR} x eval.memory_gb={memory_gb}; lower "
                        "direction.count, set direction.dtype=bfloat16, or raise eval.memory_gb")


def line_directions(d: DirectionConfig, target: PerturbedTensors) -> Directions:
    """The N lines' directions, line i drawn alone from seed + i and normalized, with the (i, x) coefficient map."""
    coordinates = target.coordinates()
    directions = []
    for seed in line_seeds(d):
        directions += normalize_all(random_raw(coordinates, 1, seed), coordinates, d.norm, d.ignore, target.logged,
                                    target.rows)
    return Directions(directions, axis_labels=list(LINE_LABELS), markers={"theta*": [0.0, 0.0]},
                      coefficients=partial(line_coefficients, count=d.count))

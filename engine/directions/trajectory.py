"""Lines, planes and paths through checkpoints: interpolation (Li et al. 2018, section 3), the plane through three
models, and the PCA of an optimization trajectory (section 7).

All math runs on one flat float64 CPU vector per model: the named tensors, flattened and concatenated in the order
of `names` (those of `engine.directions.vectors.perturbed_tensors`). Directions come back split into per-name tensors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.core.errors import UserError
from engine.core.flat import flatten, unflatten
from engine.core.progress import progress_bar
from engine.sources.checkpoints import State

COLLINEAR_TOL = 1e-8  # |part of C - A orthogonal to B - A| / |C - A| below which the three models are collinear
RANK_TOL = 1e-10  # second principal variance / first below which a trajectory counts as one-dimensional
MAX_BYTES = 2 << 30  # default cap on the centred deltas held in memory by trajectory_pca
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")

@dataclass(frozen=True)
class PCAResult:
    """Top two principal directions of a trajectory (float32, per name), their explained variance ratios, and the
    coordinates [count, 2] of every theta_i - theta_final on them (the final model sits at the origin)."""

    directions: list[list[torch.Tensor]]
    explained: tuple[float, float]
    coords: np.ndarray


def interpolation_direction(names: list[str], start: State, end: State) -> list[torch.Tensor]:
    """end - start for each named tensor: the 1D direction from model A (coordinate 0) to model B (coordinate 1)."""
    shapes = _shapes(names, start, "start checkpoint")
    _shapes(names, end, "end checkpoint", shapes)
    return [end[n].detach() - start[n].detach() for n in names]


def plane_through(
    names: list[str], a: State, b: State, c: State
) -> tuple[list[list[torch.Tensor]], dict[str, tuple[float, float]]]:
    """Orthonormal basis (e1, e2) of span(B - A, C - A) by Gram-Schmidt, in A's dtypes on the CPU, and the exact
    coordinates of A (0, 0), B (|B - A|, 0) and C (<C - A, e1>, <C - A, e2>) in it."""
    shapes = _shapes(names, a, "checkpoint A")
    origin = _flat(a, names, shapes, "checkpoint A")
    u = _flat(b, names, shapes, "checkpoint B") - origin
    w = _flat(c, names, shapes, "checkpoint C") - origin
    x_b = float(u.norm())
    if x_b == 0.0:
        raise UserError("checkpoints A and B are identical, so the three checkpoints are collinear; pick another B")
    e1 = u / x_b
    r = w - (w @ e1) * e1
    r -= (r @ e1) * e1  # a second sweep keeps e2 orthogonal to e1 to float64 rounding
    r_norm = float(r.norm())
    if r_norm <= COLLINEAR_TOL * float(w.norm()):
        raise UserError("the three checkpoints are collinear (C - A is parallel to B - A, or C equals A); "
                        "pick another C")
    e2 = r / r_norm
    dtypes = [a[n].dtype for n in names]
    basis = [unflatten(e, shapes, dtypes) for e in (e1, e2)]
    return basis, {"A": (0.0, 0.0), "B": (x_b, 0.0), "C": (float(w @ e1), float(w @ e2))}


def trajectory_pca(
    names: list[str],
    load: Callable[[int], State],
    count: int,
    final: State,
    *,
    where: str,
    max_bytes: int = MAX_BYTES,
    progress: bool = False,
) -> PCAResult:
    """PCA of the deltas theta_i - theta_final (load(i) for i < count) through their count x count Gram matrix.

    The centred deltas are held in memory when count * P * 8 <= max_bytes (one load per checkpoint); otherwise they
    are streamed, holding two flat vectors at a time (about count^2 / 2 loads). Each direction's sign is chosen so
    that the first checkpoint's coordinate is negative (the path runs towards the final model at the origin); where
    that coordinate is 0, the largest-magnitude component of the direction is made positive. With progress, a bar
    over the checkpoint loads (count, or 2 count + count (count + 1) / 2 streamed) gives the ETA.
    """
    check_trajectory(count, where)
    shapes = _shapes(names, final, f"final model of {where}")
    anchor = _flat(final, names, shapes, f"final model of {where}")
    held = count * anchor.numel() * 8 <= max_bytes
    bar = progress_bar(count if held else 2 * count + count * (count + 1) // 2, "pca trajectory", "ckpt", progress)

    def delta(i: int) -> torch.Tensor:
        state = load(i)
        bar.update(1)
        return _flat(state, names, shapes, f"checkpoint {i} of {where}") - anchor

    with bar:
        if held:
            x = torch.empty(count, anchor.numel(), dtype=torch.float64)
            for i in range(count):
                x[i] = delta(i)
            mean = x.mean(0)
            x -= mean
            weights, s, total = top_two(x @ x.T, where)
            basis = (weights.T @ x) / s.sqrt()[:, None]
        else:
            mean = streamed_mean(delta, count, anchor)
            weights, s, total = top_two(streamed_gram(delta, count, mean, torch.dot), where)
            basis = streamed_basis(delta, count, mean, weights) / s.sqrt()[:, None]
    # <x_i, d_k> = sqrt(s_k) V[i, k] for the centred x_i; the mean adds back the offset of the uncentred deltas.
    coords = weights * s.sqrt() + basis @ mean
    for k, flip in enumerate(flips(coords, lambda k: float(basis[k, int(basis[k].abs().argmax())]))):
        if flip:
            coords[:, k].neg_()
            basis[k].neg_()
    explained = (float(s[0] / total), float(s[1] / total))
    directions = [unflatten(basis[k], shapes, [torch.float32] * len(names)) for k in range(2)]
    return PCAResult(directions=directions, explained=explained, coords=coords.numpy())


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The epoch_NNN.pt files of a training run's checkpoint folder, ordered by epoch number (final.pt left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"checkpoint folder {folder} does not exist; give a training run's checkpoints/ folder "
                        "(it holds epoch_NNN.pt)")
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := EPOCH_FILE.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def streamed_mean(delta: Callable[[int], torch.Tensor], count: int, like: torch.Tensor) -> torch.Tensor:
    """The mean of delta(0..count-1), one delta held at a time."""
    mean = torch.zeros_like(like)
    for i in range(count):
        mean += delta(i)
    return mean / count


def streamed_gram(delta: Callable[[int], torch.Tensor], count: int, mean: torch.Tensor,
                  dot: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The count x count Gram matrix of the centred deltas under `dot`, two deltas held at a time."""
    gram = torch.empty(count, count, dtype=torch.float64)
    for i in range(count):
        xi = delta(i) - mean
        gram[i, i] = dot(xi, xi)
        for j in range(i + 1, count):
            gram[i, j] = gram[j, i] = dot(xi, delta(j) - mean)
    return gram


def streamed_basis(delta: Callable[[int], torch.Tensor], count: int, mean: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """The two combinations sum_i weights[i, k] (delta(i) - mean), one delta held at a time (not yet scaled)."""
    basis = torch.zeros(2, mean.numel(), dtype=torch.float64)
    for i in range(count):
        xi = delta(i) - mean
        basis[0].add_(xi, alpha=float(weights[i, 0]))
        basis[1].add_(xi, alpha=float(weights[i, 1]))
    return basis


def pc_labels(explained: tuple[float, float] | list[float]) -> list[str]:
    """The axis labels of a PCA plane: each component with its share of the variance."""
    return [f"PC{k + 1} ({explained[k]:.1%} of the variance)" for k in range(2)]


def check_trajectory(count: int, where: str) -> None:
    """Refuse a trajectory of fewer than 3 checkpoints in one line."""
    if count < 3:
        raise UserError(f"PCA of a trajectory needs at least 3 checkpoints (2 span a single direction once centred), "
                        f"found {count} in {where}; save more epochs")


def flips(coords: torch.Tensor, largest_entry: Callable[[int], float]) -> list[bool]:
    """Which of the two directions to negate so that the first checkpoint's coordinate is negative (the path runs
    towards the final model at the origin); where it is 0, so that direction k's largest-magnitude entry (the first
    such, largest_entry(k)) is positive."""
    out = []
    for k in range(2):
        first = float(coords[0, k])
        scale = float(coords[:, k].abs().max())
        out.append(first > 0 if abs(first) > 1e-12 * scale else largest_entry(k) < 0)
    return out


def top_two(gram: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvectors [count, 2] and eigenvalues of the two largest eigenvalues of gram, and the total variance."""
    values, vectors = torch.linalg.eigh(gram)
    s, weights = values.flip(0)[:2], vectors.flip(1)[:, :2]
    if float(s[0]) <= 0 or float(s[1]) <= RANK_TOL * float(s[0]):
        raise UserError(f"the checkpoints in {where} span fewer than 2 dimensions around their mean, so PCA has no "
                        "plane; use checkpoints that differ (or interpolate between two of them)")
    return weights, s, values.clamp(min=0).sum()


def _shapes(
    names: list[str], state: State, origin: str, expected: list[tuple[int, ...]] | None = None
) -> list[tuple[int, ...]]:
    """The shapes of the named tensors of state, refused with a line naming the first missing or mis-shaped one."""
    shapes = []
    for k, name in enumerate(names):
        if name not in state:
            raise UserError(f"{origin} lacks tensor {name}; all checkpoints must come from the same model")
        shape = tuple(state[name].shape)
        if expected is not None and shape != expected[k]:
            raise UserError(f"{origin}: tensor {name} has shape {shape}, expected {expected[k]}; "
                            "all checkpoints must come from the same model")
        shapes.append(shape)
    return shapes


def _flat(state: State, names: list[str], shapes: list[tuple[int, ...]], origin: str) -> torch.Tensor:
    """The named tensors of state as one flat float64 CPU vector (shapes checked against `shapes`)."""
    _shapes(names, state, origin, shapes)
    return flatten([state[n] for n in names], torch.float64)

"""Directions made from other checkpoints: the line from model A to model B (Goodfellow et al. 2015), the plane
through A, B and C, and the PCA plane of a training trajectory (Li et al. 2018, section 7).

A is theta* (model.checkpoint, or the weights this run trained). Each kind also says what the figures mark:
the models at their exact coordinates, axis labels, and the projected trajectory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.directions.align import save_aligned
from engine.directions.kinds import Directions
from engine.directions.trajectory import (
    interpolation_direction,
    list_checkpoints,
    pc_labels,
    plane_through,
    trajectory_pca,
)
from engine.sources.checkpoints import State, load_state


def _coordinates(state: State, in_log: set[str]) -> State:
    return {n: (t.log() if n in in_log else t) for n, t in state.items()}


def _on_device(tensors: list[torch.Tensor], theta: list[torch.Tensor]) -> list[torch.Tensor]:
    return [x.to(t.device, t.dtype) for x, t in zip(tensors, theta)]


def _origin(names: list[str], theta: list[torch.Tensor], in_log: set[str]) -> State:
    return _coordinates({n: t.detach().cpu() for n, t in zip(names, theta)}, in_log)


def other_state(path: str, model: nn.Module, label: str, aligned_to: Path | None) -> State:
    """Checkpoint `label`'s state; with aligned_to (a run folder), permuted onto A by weight matching and saved
    there as aligned_<label>.pt."""
    state = load_state(path, model)
    return state if aligned_to is None else save_aligned(model, state, aligned_to / f"aligned_{label}.pt", label)


def interpolation(checkpoint: str, model: nn.Module, names: list[str], theta: list[torch.Tensor],
                  in_log: set[str], aligned_to: Path | None = None) -> Directions:
    """The line from theta* (A, at 0) to the checkpoint (B, at 1); the Perturber lerps to B's own tensors.

    `in_log` names the tensors taken in log space (running variances), as the Perturber moves them; with
    direction.over=states the BatchNorm statistics are part of every model, so each marked model is met with its
    own statistics too. With aligned_to, B is first permuted onto A (direction.align=weights).
    """
    b = other_state(checkpoint, model, "B", aligned_to)
    a = _origin(names, theta, in_log)
    direction = _on_device(interpolation_direction(names, a, _coordinates(b, in_log)), theta)
    label = "A (0) to B (1)" if aligned_to is None else "A (0) to B aligned to A (1)"
    return Directions([direction], end=_on_device([b[n] for n in names], theta), markers={"A": [0.0], "B": [1.0]},
                      axis_labels=[label, ""])


def plane(checkpoints: list[str], model: nn.Module, names: list[str], theta: list[torch.Tensor],
          in_log: set[str], aligned_to: Path | None = None) -> Directions:
    """The orthonormalized plane through theta* (A), B and C, with the three models marked at their coordinates;
    with aligned_to, B and C are each first permuted onto A (direction.align=weights)."""
    b, c = (_coordinates(other_state(path, model, label, aligned_to), in_log) for path, label in zip(checkpoints, "BC"))
    basis, coords = plane_through(names, _origin(names, theta, in_log), b, c)
    markers = {k: [float(x) for x in v] for k, v in coords.items()}
    first = "e1 (along B - A)" if aligned_to is None else "e1 (along aligned B - A)"
    return Directions([_on_device(v, theta) for v in basis], markers=markers, axis_labels=[first, "e2"])


def pca(folder: Path, model: nn.Module, names: list[str], theta: list[torch.Tensor], in_log: set[str],
        progress: bool = False) -> Directions:
    """The top two principal components of the trajectory epoch_*.pt in folder, relative to theta* (the final model);
    with progress, a bar over the checkpoints loaded."""
    files = list_checkpoints(folder)
    result = trajectory_pca(names, lambda i: _coordinates(load_state(files[i], model), in_log), len(files),
                            _origin(names, theta, in_log), where=str(folder), progress=progress)
    return Directions([_on_device(v, theta) for v in result.directions], markers={"final": [0.0, 0.0]},
                      axis_labels=pc_labels(result.explained), trajectory=np.asarray(result.coords, dtype=np.float64),
                      explained=[float(e) for e in result.explained])

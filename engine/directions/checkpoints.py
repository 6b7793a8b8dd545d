"""Directions made from other checkpoints: the line from model A to model B (Goodfellow et al. 2015), the plane
through A, B and C, and the PCA plane of a training trajectory (Li et al. 2018, section 7).

A is theta* (model.checkpoint, or the weights this run trained). Each kind also says what the figures mark:
the models at their exact coordinates, axis labels, and the projected trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.config.schema import DirectionConfig
from engine.core.errors import UserError
from engine.directions.trajectory import (
    State,
    interpolation_direction,
    list_checkpoints,
    load_state,
    plane_through,
    trajectory_pca,
)

KINDS = ("interpolation", "plane", "pca")


@dataclass
class CheckpointDirections:
    """The directions and what goes with them into the store's attributes and arrays."""

    directions: list[list[torch.Tensor]]
    end: list[torch.Tensor] | None = None  # interpolation: model B, which the Perturber lerps to
    markers: dict[str, list[float]] = field(default_factory=dict)
    axis_labels: list[str] = field(default_factory=lambda: ["d1", "d2"])
    trajectory: np.ndarray | None = None  # pca: [checkpoints, 2] projected coordinates
    explained: list[float] | None = None  # pca: explained variance ratio of the two components


def checkpoint_directions(d: DirectionConfig, model: nn.Module, names: list[str], theta: list[torch.Tensor],
                          run_dir: Path, ndim: int, logged: list[bool] | None = None) -> CheckpointDirections:
    """Build the configured kind's directions over the perturbed tensors (names, theta at theta*).

    With direction.over=states the BatchNorm statistics are part of every model, so each marked model is met with its
    own statistics too; `logged` tensors (running variances) are taken in log space, as the Perturber moves them.
    """
    in_log = {n for n, m in zip(names, logged or []) if m}

    def coordinates(state: State) -> State:
        return {n: (t.log() if n in in_log else t) for n, t in state.items()}

    a = coordinates({n: t.detach().cpu() for n, t in zip(names, theta)})

    def on_device(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x.to(t.device, t.dtype) for x, t in zip(tensors, theta)]

    if d.kind == "interpolation":
        if ndim != 1:
            raise UserError("direction=interpolation is a 1D sweep: use grid=line (e.g. grid.resolution=[41] "
                            "grid.x=[-0.5,1.5] to extrapolate beyond both models)")
        b = load_state(d.checkpoints[0], model)
        direction = on_device(interpolation_direction(names, a, coordinates(b)))
        return CheckpointDirections([direction], end=on_device([b[n] for n in names]),
                                    markers={"A": [0.0], "B": [1.0]}, axis_labels=["A (0) to B (1)", ""])
    if ndim != 2:
        raise UserError(f"direction={d.kind} spans a plane: use grid=plane (grid.resolution=[nx,ny])")
    if d.kind == "plane":
        b, c = (coordinates(load_state(path, model)) for path in d.checkpoints)
        basis, coords = plane_through(names, a, b, c)
        return CheckpointDirections([on_device(v) for v in basis],
                                    markers={k: [float(x) for x in v] for k, v in coords.items()},
                                    axis_labels=["e1 (along B - A)", "e2"])
    folder = Path(d.trajectory) if d.trajectory else run_dir / "checkpoints"
    files = list_checkpoints(folder)
    result = trajectory_pca(names, lambda i: coordinates(load_state(files[i], model)), len(files), a, where=str(folder))
    labels = [f"PC{k + 1} ({result.explained[k]:.1%} of the variance)" for k in range(2)]
    return CheckpointDirections([on_device(v) for v in result.directions], markers={"final": [0.0, 0.0]},
                                axis_labels=labels, trajectory=np.asarray(result.coords, dtype=np.float64),
                                explained=[float(e) for e in result.explained])

"""Directions in weight space: which tensors are perturbed, seeded random draws, normalization, loading.

A direction is a list of tensors aligned with `perturbed_tensors(model, over)`. Filter normalization
(Li et al. 2018): each slice along dim 0 of a rank >= 2 tensor (a conv filter, a linear row) is rescaled
to the norm of the same slice of theta*; rank-1 tensors are zeroed (ignore=biasbn) or rescaled whole.

BatchNorm running variances (direction.over=states) move in log space: var = var* exp(sum_k c_k d_k), so they stay
positive at every coordinate. Directions hold such a tensor's log-space entries ("coordinates" below).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.core.errors import UserError
from engine.sources.batchnorm import batchnorm_layers

EPS = 1e-10


def perturbed_tensors(model: nn.Module, over: str) -> list[tuple[str, torch.Tensor]]:
    """The named live tensors a direction covers: parameters, plus float buffers (BN statistics) for 'states'."""
    named: list[tuple[str, torch.Tensor]] = list(model.named_parameters())
    if over == "states":
        named += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return named


@dataclass
class PerturbedTensors:
    """The live tensors a sweep moves, their names, and which of them move in log space (running variances)."""

    names: list[str]
    tensors: list[torch.Tensor]  # live: the sweep moves these in place
    logged: list[bool]
    theta: list[torch.Tensor]  # theta*, detached when taken (before any change of the model's memory format)

    def coordinates(self) -> list[torch.Tensor]:
        """theta* as directions see it (the log of the log-space tensors)."""
        return to_coordinates(self.theta, self.logged)


def perturbed(model: nn.Module, over: str) -> PerturbedTensors:
    """What direction.over covers in model ('weights' or 'states'), with the log-space mask."""
    named = perturbed_tensors(model, over)
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    return PerturbedTensors(names, tensors, log_space(model, names), [t.detach() for t in tensors])


def log_space(model: nn.Module, names: list[str]) -> list[bool]:
    """Which of the named perturbed tensors move in log space: the BatchNorm running variances."""
    layers = {id(m) for m in batchnorm_layers(model)}
    variances = {f"{prefix}.running_var" if prefix else "running_var"
                 for prefix, m in model.named_modules() if id(m) in layers}
    return [n in variances for n in names]


def to_coordinates(tensors: list[torch.Tensor], logged: list[bool]) -> list[torch.Tensor]:
    """The tensors as directions see them: the log of those that move in log space, the rest as they are."""
    return [t.detach().log() if m else t.detach() for t, m in zip(tensors, logged)]


def normalize(direction: list[torch.Tensor], theta: list[torch.Tensor], norm: str, ignore: str,
              logged: list[bool] | None = None) -> list[torch.Tensor]:
    """Rescale a raw direction against theta* by 'filter', 'layer' or 'none'; rank-1 tensors per `ignore`.

    A log-space tensor (logged) is scaled to unit root-mean-square under 'filter' and 'layer': at coordinate 1 each
    variance changes by a factor of about e, the size of change filter normalization gives the weights.
    """
    out = []
    for i, (d, w) in enumerate(zip(direction, theta)):
        if d.dim() <= 1 and ignore == "biasbn":
            out.append(torch.zeros_like(d))
        elif logged is not None and logged[i] and norm != "none":
            out.append(d * (d.numel() ** 0.5 / (d.norm() + EPS)))
        elif norm == "none":
            out.append(d.clone())
        elif norm == "filter" and d.dim() >= 2:
            d_rows, w_rows = d.reshape(d.shape[0], -1), w.reshape(w.shape[0], -1)
            scale = w_rows.norm(dim=1) / (d_rows.norm(dim=1) + EPS)
            out.append((d_rows * scale[:, None]).reshape(d.shape))
        else:
            out.append(d * (w.norm() / (d.norm() + EPS)))
    return out


def random_raw(theta: list[torch.Tensor], count: int, seed: int) -> list[list[torch.Tensor]]:
    """`count` seeded Gaussian directions shaped like theta, not yet normalized; drawn on the CPU in float32 so
    every device agrees."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.device, w.dtype) for w in theta]
            for _ in range(count)]


def random_directions(
    theta: list[torch.Tensor], count: int, seed: int, norm: str, ignore: str, logged: list[bool] | None = None
) -> list[list[torch.Tensor]]:
    """`count` seeded Gaussian directions, normalized against theta."""
    return [normalize(raw, theta, norm, ignore, logged) for raw in random_raw(theta, count, seed)]


def load_directions(
    path: str | Path, names: list[str], theta: list[torch.Tensor], count: int
) -> list[list[torch.Tensor]]:
    """Load `count` directions from a .pt file (a list of {tensor name: tensor}) or another run's .zarr store."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"direction.path={path} does not exist")
    if path.suffix == ".zarr" or path.is_dir():
        from engine.store.read import read_directions

        loaded = read_directions(path)
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"direction file {path} cannot be read ({type(err).__name__})") from None
        if isinstance(loaded, dict):
            loaded = [loaded]
    if not isinstance(loaded, list) or len(loaded) < count:
        raise UserError(f"direction file {path} holds {len(loaded) if isinstance(loaded, list) else 0} "
                        f"direction(s); the grid needs {count}")
    dirs = []
    for k, d in enumerate(loaded[:count]):
        missing = [n for n in names if n not in d]
        if missing:
            raise UserError(f"direction {k} in {path} lacks tensor {missing[0]} (and {len(missing) - 1} more); "
                            "it was made for another model or direction.over")
        bad = [n for n, w in zip(names, theta) if tuple(d[n].shape) != tuple(w.shape)]
        if bad:
            raise UserError(f"direction {k} in {path}: tensor {bad[0]} has shape {tuple(d[bad[0]].shape)}, "
                            "the model's differs; it was made for another model")
        dirs.append([d[n].to(w.device, w.dtype) for n, w in zip(names, theta)])
    return dirs

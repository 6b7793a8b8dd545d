"""Directions in weight space: which tensors are perturbed, seeded random draws, normalization, loading.

A direction is a list of tensors aligned with `perturbed_tensors(model, over)`. Filter normalization
(Li et al. 2018): each slice along dim 0 of a rank >= 2 tensor (a conv filter, a linear row) is rescaled
to the norm of the same slice of theta*; rank-1 tensors are zeroed (ignore=biasbn) or rescaled whole.

BatchNorm running variances (direction.over=states) move in log space: var = var* exp(sum_k c_k d_k), so they stay
positive at every coordinate. Directions hold such a tensor's log-space entries ("coordinates" below).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.core.errors import UserError
from engine.sources.batchnorm import batchnorm_layers

EPS = 1e-10


def perturbed_tensors(model: nn.Module, over: str, include: Sequence[str] = (), exclude: Sequence[str] = (),
                      frozen: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The named live tensors a direction covers: parameters (trainable ones unless frozen; a tied tensor once,
    under its first name), plus float buffers (BN statistics) for 'states'; then only the names matching an include
    regex (when there are any) and none of the exclude regexes."""
    named: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in model.named_parameters()
                                             if frozen or p.requires_grad]
    if over == "states":
        named += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return scoped(named, include, exclude)


def scoped(named: list[tuple[str, torch.Tensor]], include: Sequence[str],
           exclude: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
    """The named tensors that match an include pattern (all when none is given) and no exclude pattern; a pattern
    that matches no tensor, or one that is not a regex, is refused in one line."""
    names = [n for n, _ in named]
    for key, patterns in (("direction.include", include), ("direction.exclude", exclude)):
        for pattern in patterns:
            try:
                hits = [n for n in names if re.search(pattern, n)]
            except re.error as err:
                raise UserError(f"{key}: {pattern!r} is not a regular expression ({err})") from None
            if not hits:
                raise UserError(f"{key}: {pattern!r} matches no parameter; the names look like "
                                f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}")
    kept = [(n, t) for n, t in named if (not include or any(re.search(p, n) for p in include))
            and not any(re.search(p, n) for p in exclude)]
    if not kept:
        raise UserError(f"direction.include={list(include)} and direction.exclude={list(exclude)} leave no tensor to "
                        "move; loosen them")
    return kept


@dataclass
class PerturbedTensors:
    """The live tensors a sweep moves, their names, and which of them move in log space (running variances)."""

    names: list[str]
    tensors: list[torch.Tensor]  # live: the sweep moves these in place
    logged: list[bool]
    theta: list[torch.Tensor]  # theta*, detached when taken (before any change of the model's memory format)
    rows: list[int] | None = None  # per tensor, the dim whose slices are its filters / output rows (None: all 0)

    def coordinates(self) -> list[torch.Tensor]:
        """theta* as directions see it (the log of the log-space tensors)."""
        return to_coordinates(self.theta, self.logged)


def perturbed(model: nn.Module, over: str, include: Sequence[str] = (), exclude: Sequence[str] = (),
              frozen: bool = False) -> PerturbedTensors:
    """What direction.over covers in model ('weights' or 'states'), scoped by the include / exclude patterns, with
    the log-space mask."""
    named = perturbed_tensors(model, over, include, exclude, frozen)
    names = [n for n, _ in named]
    tensors = [t for _, t in named]
    return PerturbedTensors(names, tensors, log_space(model, names), [t.detach() for t in tensors],
                            output_rows(model, names))


def output_rows(model: nn.Module, names: list[str]) -> list[int]:
    """Per named tensor, the dim that indexes its outputs (filters, rows): 0, except for the [in, out] weight of
    transformers' Conv1D (GPT-2's linear layers), whose outputs are its columns."""
    transposed = {f"{prefix}.weight" if prefix else "weight" for prefix, m in model.named_modules()
                  if type(m).__name__ == "Conv1D" and type(m).__module__.startswith("transformers")}
    return [1 if n in transposed else 0 for n in names]


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
              logged: list[bool] | None = None, rows: list[int] | None = None) -> list[torch.Tensor]:
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
            dim = rows[i] if rows is not None else 0  # the outputs' dim: each of its slices is one filter / row
            d_t, w_t = d.movedim(dim, 0), w.movedim(dim, 0)
            d_rows, w_rows = d_t.reshape(d_t.shape[0], -1), w_t.reshape(w_t.shape[0], -1).to(d.dtype)
            scale = w_rows.norm(dim=1) / (d_rows.norm(dim=1) + EPS)
            out.append((d_rows * scale[:, None]).reshape(d_t.shape).movedim(0, dim))
        else:
            out.append(d * (w.to(d.dtype).norm() / (d.norm() + EPS)))
    return out


def normalize_all(raw: list[list[torch.Tensor]], theta: list[torch.Tensor], norm: str, ignore: str,
                  logged: list[bool] | None = None, rows: list[int] | None = None) -> list[list[torch.Tensor]]:
    """normalize() of every raw direction, each raw tensor let go of (removed from `raw`) once its normalized one
    exists: the raw and normalized directions together never hold more than `count` copies of the weights plus one
    tensor (a large model's directions stage would otherwise hold two of each)."""
    out = []
    for direction in raw:
        done = []
        for i in range(len(direction)):
            one = normalize(direction[i : i + 1], theta[i : i + 1], norm, ignore,
                            None if logged is None else logged[i : i + 1], None if rows is None else rows[i : i + 1])
            done.append(one[0])
            direction[i] = done[-1]  # the raw tensor's last reference goes here
        out.append(done)
    return out


def random_raw(theta: list[torch.Tensor], count: int, seed: int) -> list[list[torch.Tensor]]:
    """`count` seeded Gaussian directions shaped like theta, not yet normalized; drawn on the CPU in float32 so
    every device agrees."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.device, wide(w.dtype)) for w in theta]
            for _ in range(count)]


def seeded_normalized(g: torch.Generator, whole: Iterable[torch.Tensor], norm: str, ignore: str,
                      logged: list[bool] | None = None, rows: list[int] | None = None,
                      dtype: torch.dtype | None = None) -> Iterator[torch.Tensor]:
    """One seeded Gaussian direction drawn and normalized tensor by tensor against theta*'s whole tensors (the
    stream random_raw draws, in its order), each held in dtype at once when given: a stage that makes directions
    this way holds them and one tensor in float32, never a float32 copy of them all."""
    for i, w in enumerate(whole):
        raw = torch.randn(w.shape, generator=g, dtype=torch.float32).to(w.device, wide(w.dtype))
        one = normalize([raw], [w], norm, ignore, None if logged is None else logged[i : i + 1],
                        None if rows is None else rows[i : i + 1])[0]
        yield one.to(dtype) if dtype is not None and one.is_floating_point() else one


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype directions are made in for a tensor of this dtype: float32, or the tensor's own if wider."""
    return torch.promote_types(dtype, torch.float32)


def random_directions(
    theta: list[torch.Tensor], count: int, seed: int, norm: str, ignore: str, logged: list[bool] | None = None
) -> list[list[torch.Tensor]]:
    """`count` seeded Gaussian directions, normalized against theta."""
    return normalize_all(random_raw(theta, count, seed), theta, norm, ignore, logged)


def load_directions(
    path: str | Path, names: list[str], theta: list[torch.Tensor], count: int
) -> list[list[torch.Tensor]]:
    """Load `count` directions from a .pt file (a list of {tensor name: tensor}) or another run's .zarr store, one
    tensor at a time (engine.directions.direction_files)."""
    from engine.directions.direction_files import DirectionFile

    source = DirectionFile(path)
    source.check(names, [tuple(w.shape) for w in theta], count)
    return [[source.tensor(k, n).to(w.device, wide(w.dtype)) for n, w in zip(names, theta)] for k in range(count)]

"""Lists of tensors as one flat vector and back: how directions are stored and how trajectories are projected."""

from __future__ import annotations

import torch


def flatten(tensors: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One flat CPU vector of the tensors, in order, as `dtype` (float32: the store's format)."""
    parts = [t.detach().reshape(-1).to("cpu", dtype) for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def unflatten(flat: torch.Tensor, shapes: list[tuple[int, ...]],
              dtypes: list[torch.dtype] | None = None) -> list[torch.Tensor]:
    """Split a flat vector back into tensors of the given shapes (and dtypes, when given)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    out = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
    return out if dtypes is None else [t.to(d) for t, d in zip(out, dtypes)]

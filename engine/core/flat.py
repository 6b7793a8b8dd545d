"""Lists of tensors as one flat vector and back: how directions are stored and how trajectories are projected."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch


def flatten(tensors: list[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One flat CPU vector of the tensors, in order, as `dtype` (float32: the store's format)."""
    parts = [t.detach().reshape(-1).to("cpu", dtype) for t in tensors]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def flat_chunks(tensors: Iterable[torch.Tensor], chunk: int,
                dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, np.ndarray]]:
    """The flat vector of `flatten(tensors)` as consecutive (start, values) pieces of `chunk` entries (the last may
    be shorter), built tensor by tensor: a store writes it chunk by chunk holding one chunk, never the whole vector."""
    buffer, filled, start = np.empty(chunk, dtype=torch.empty(0, dtype=dtype).numpy().dtype), 0, 0
    for t in tensors:
        values = t.detach().reshape(-1)
        offset = 0
        while offset < values.numel():
            take = min(chunk - filled, values.numel() - offset)
            buffer[filled:filled + take] = values[offset:offset + take].to("cpu", dtype).numpy()
            filled, offset = filled + take, offset + take
            if filled == chunk:
                yield start, buffer
                buffer, filled, start = np.empty_like(buffer), 0, start + chunk
    if filled:
        yield start, buffer[:filled]


def unflatten(flat: torch.Tensor, shapes: list[tuple[int, ...]],
              dtypes: list[torch.dtype] | None = None) -> list[torch.Tensor]:
    """Split a flat vector back into tensors of the given shapes (and dtypes, when given)."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    out = [t.reshape(s) for t, s in zip(torch.split(flat, sizes), shapes)]
    return out if dtypes is None else [t.to(d) for t, d in zip(out, dtypes)]

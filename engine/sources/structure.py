"""Batch structures: a batch is a tensor, a tuple or list of them, or a mapping (a dict, a tokenizer's
BatchEncoding) of them, nested as deep as a data set makes it. These helpers walk one without knowing its shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from engine.core.errors import UserError

Batch = Any  # a tensor, or a tuple / list / mapping of batches; non-tensor leaves are kept as they are


def map_tensors(batch: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    """The same structure with fn applied to every tensor (mappings become dicts, lists stay lists)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def tensors_of(batch: Batch) -> list[torch.Tensor]:
    """Every tensor of the structure, in order."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [t for v in batch.values() for t in tensors_of(v)]
    if isinstance(batch, tuple | list):
        return [t for v in batch for t in tensors_of(v)]
    return []


def to_device(batch: Batch, device: torch.device, non_blocking: bool = False) -> Batch:
    """The structure with every tensor on device."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def items_in(batch: Batch) -> int:
    """How many samples the structure holds: the leading size of its first tensor."""
    tensors = tensors_of(batch)
    if not tensors or tensors[0].dim() == 0:
        raise UserError(f"a batch of {type(batch).__name__} holds no batched tensor; give tensors, tuples, lists or "
                        "dicts of tensors whose first dimension is the sample")
    return int(tensors[0].shape[0])


def take(batch: Batch, index: torch.Tensor | slice) -> Batch:
    """The samples at index (a slice or a tensor of positions) of every tensor of the structure."""
    return map_tensors(batch, lambda t: t[index])


def cat(batches: list[Batch]) -> Batch:
    """Batches of one structure joined along the sample dimension."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, Mapping):
        return {k: cat([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(cat([b[i] for b in batches]) for i in range(len(first)))
    return first


def nbytes(batch: Batch) -> int:
    """Bytes held by the structure's tensors."""
    return sum(t.numel() * t.element_size() for t in tensors_of(batch))

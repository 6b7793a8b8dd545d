"""The no-gradient mode of a forward that reads only: inference mode, except on an FSDP2-sharded model, whose
gathered-weight buffers are kept across forwards and would then be inference tensors that a later backward (the
sharpness ascent) may not write."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def sharded(model: Any) -> bool:
    """Whether the model is an FSDP2 module (fully_shard), told without importing FSDP2."""
    return any(c.__name__ == "FSDPModule" for c in type(model).__mro__)


def reading(model: Any) -> contextlib.AbstractContextManager[Any]:
    """torch.inference_mode() for a forward that only reads the model; torch.no_grad() on a sharded model."""
    return torch.no_grad() if sharded(model) else torch.inference_mode()

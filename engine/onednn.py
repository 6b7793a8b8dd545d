"""A guard for autograd through channels_last weights on the CPU.

torch 2.13's oneDNN weight gradient of a strided 1x1 convolution in channels_last corrupts the heap when it runs on
one thread (torchrun's default): "double free or corruption" or a segfault in the Hessian or sharpness stages. The
native kernels compute the same gradients without it, so autograd through such weights runs with oneDNN off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def _channels_last_cpu(p: torch.Tensor) -> bool:
    # a 1x1 kernel's weight is laid out alike in both formats: it counts, since its input may be channels_last
    return p.device.type == "cpu" and p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def safe_autograd(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """oneDNN off while the enclosed autograd touches channels_last (or 1x1) CPU conv weights; a no-op otherwise."""
    if not any(_channels_last_cpu(p) for p in params):
        yield
        return
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # (mkldnn.flags() would also set oneDNN's TF32 flag, which warns on CPUs)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was

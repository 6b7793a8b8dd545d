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
    # a model converted to channels_last shows it in its k x k conv weights (a 1x1 weight looks alike in both formats,
    # so it alone does not count: a contiguous ResNet's 1x1 shortcuts keep oneDNN, which is 2x faster there)
    return (p.device.type == "cpu" and p.dim() == 4 and not p.is_contiguous()
            and p.is_contiguous(memory_format=torch.channels_last))


@contextlib.contextmanager
def safe_autograd(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """oneDNN off while the enclosed autograd touches a channels_last CPU model; a no-op otherwise."""
    if not any(_channels_last_cpu(p) for p in params):
        yield
        return
    was = torch.backends.mkldnn.enabled
    # (mkldnn.flags() would also set oneDNN's TF32 flag, which warns on CPUs)
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # a bool flag at runtime; stubs: ContextProp
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was

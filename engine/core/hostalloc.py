"""Host allocator settings for CPU sweeps.

glibc serves large allocations (a batch's activations) with mmap and returns them to the kernel on free.
The next point then faults in fresh zeroed pages for the same buffers. On ResNet-20 with 256 images that
took about a third of a point's time here. Raising the mmap and trim thresholds keeps freed buffers in the
heap for reuse: the same effect as running under jemalloc or tcmalloc, which PyTorch's CPU tuning guide
recommends.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2  # the main thread's heap and one that every other thread (zarr's I/O loop, the tile writer) shares
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit (4 * 1 MiB * sizeof(long))
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so freed activations are reused; False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    log.info("glibc malloc: mmap threshold %d MiB, trim threshold %d MiB (%s)", MMAP_THRESHOLD >> 20,
             TRIM_THRESHOLD >> 20, "set" if ok else "refused")
    return ok


def release_freed_memory() -> bool:
    """Collect unreachable objects (reference cycles that hold tensors) and hand the heap's free pages back to the
    kernel (glibc malloc_trim): called between stages, where a large model's freed copies would otherwise stay
    resident under the thresholds above; False where not glibc."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


@contextmanager
def imports_frozen() -> Iterator[None]:
    """Inside it, the objects alive when it was entered (the imported modules' functions, classes and constants: some
    hundred thousand, never garbage) are hidden from the cyclic collector (gc.freeze), so each collection between
    stages scans only the run's own objects: 0.24 s a collection before, in a process that had imported transformers
    and torchvision here. They are still freed by reference counting, and handed back to the collector on exit."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def few_arenas() -> bool:
    """Cap glibc's heaps at ARENAS before a run starts its threads. By default each thread that allocates gets a heap
    of its own, and memory freed there (zarr's decoded chunks of a large model's directions: about 1.2 bytes per
    parameter on an 85M model) stays resident, malloc_trim or not. False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, ARENAS) == 1)
    except (OSError, AttributeError):
        return False


RETURNED_MMAP_THRESHOLD = 2**20  # 1 MiB: a tensor of that size or more is mapped on its own and unmapped when freed
RETURNED_FROM_BYTES = 64 * 2**20  # below this much model, what the heap keeps is small and its reuse is faster


@contextmanager
def returning_freed_memory(model_bytes: int) -> Iterator[None]:
    """Inside it, for a model of at least RETURNED_FROM_BYTES, allocations of 1 MiB or more get pages of their own that
    go back to the kernel when freed (glibc's mmap threshold lowered, then set back to MMAP_THRESHOLD): for stages
    that free and make again the model's size in pieces many times (the sharpness ascents' steps, FSDP2's gathers),
    where the heap would keep the freed pieces resident and grow by fragmentation. A no-op where not glibc."""
    libc = None
    if model_bytes >= RETURNED_FROM_BYTES and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, RETURNED_MMAP_THRESHOLD)
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            release_freed_memory()

"""engine.core.hostalloc: the host allocator setting that keeps freed memory."""

from __future__ import annotations

from engine.core.hostalloc import keep_freed_memory


def test_host_malloc_setting_applies_on_linux():
    assert keep_freed_memory()


def test_released_memory_leaves_the_resident_set():
    """A 64 MB tensor held in a reference cycle (as torch.vmap's bound method keeps an evaluator) and freed: after
    release_freed_memory it no longer counts in the process's resident set."""
    import torch

    from engine.core.hostalloc import release_freed_memory
    from engine.core.memory import current_bytes

    class Holder:
        def __init__(self) -> None:
            self.data = torch.ones(16 * 2**20)  # 64 MB, touched
            self.me = self  # a cycle: only the cyclic collector frees it

    cpu = torch.device("cpu")
    holder = Holder()
    before = current_bytes(cpu)
    del holder
    release_freed_memory()
    assert current_bytes(cpu) < before - 48 * 2**20


def test_heaps_are_capped_on_linux():
    from engine.core.hostalloc import few_arenas

    assert few_arenas()

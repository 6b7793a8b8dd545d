"""engine.core.hostalloc: the host allocator setting that keeps freed memory."""

from __future__ import annotations

from engine.core.hostalloc import keep_freed_memory


def test_host_malloc_setting_applies_on_linux():
    assert keep_freed_memory()

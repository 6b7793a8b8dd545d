"""The tile counter: an atomic counter in the process group's key-value store from which ranks claim work, so a
slow rank never holds the others back."""

from __future__ import annotations

import torch.distributed as dist

from engine.core.dist import DistEnv


class TileCounter:
    """An atomic counter shared by all ranks (the process group's store); one process counts alone."""

    def __init__(self, env: DistEnv, key: str) -> None:
        self.key = key
        self.store = dist.distributed_c10d._get_default_store() if env.distributed else None
        self.local = 0

    def add(self, amount: int) -> int:
        """Add amount and return the new total, atomically across ranks."""
        if self.store is None:
            self.local += amount
            return self.local
        return int(self.store.add(self.key, amount))

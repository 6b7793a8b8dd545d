"""Peak memory per stage of a run, measured (not estimated): resident bytes of the process on a CPU, allocated bytes
of the device on a GPU. A stage's peak is read after resetting the peak counter at its start, so each stage reports
its own high-water mark; the run logs them as bytes per parameter beyond what the process held before the model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger("engine")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (Linux), None elsewhere."""
    try:
        found = re.search(rf"^{field}:\s+(\d+)", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def reset_peak(device: torch.device) -> bool:
    """Start a new high-water mark for this process (CPU: resident set; CUDA: allocated); False where that cannot
    be done (the peak then counts from the process's start)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")  # Linux: resets VmHWM to the current resident set
    except OSError:
        return False
    return True


def peak_bytes(device: torch.device) -> int:
    """The high-water mark since the last reset_peak: resident bytes (CPU) or allocated device bytes (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kb = _status_kb("VmHWM")
    return 1024 * kb if kb is not None else 0


def current_bytes(device: torch.device) -> int:
    """Bytes held now: resident (CPU) or allocated on the device (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    kb = _status_kb("VmRSS")
    return 1024 * kb if kb is not None else 0


class StageMemory:
    """Each stage's peak memory beyond the process's before any model was built, kept in order of the stages."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = current_bytes(device)
        self.peaks: dict[str, int] = {}
        self.held: dict[str, int] = {}  # what each stage leaves held when it ends (beyond the base)
        self.highest = 0  # the run's own peak beyond the base: the largest of the stages' (each resets the counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure the block as stage `name` (a stage entered twice keeps its larger peak)."""
        measured = reset_peak(self.device)
        try:
            yield
        finally:
            if measured:
                self.peaks[name] = max(self.peaks.get(name, 0), peak_bytes(self.device) - self.base)
                self.highest = max(self.highest, self.peaks[name])
            self.held[name] = current_bytes(self.device) - self.base

    def table(self, params: int) -> dict[str, dict[str, float]]:
        """{stage: {"gb": peak beyond the base in GB, "bytes_per_param": that over params, "held_bytes_per_param":
        what the stage left held, over params}}."""
        n = max(params, 1)
        return {name: {"gb": round(b / 1e9, 3), "bytes_per_param": round(b / n, 2),
                       "held_bytes_per_param": round(self.held.get(name, 0) / n, 2)} for name, b in self.peaks.items()}

    def log(self, params: int) -> None:
        """Two lines in the engine log: the run's peak, and every stage's peak (and what it left held) in bytes
        per parameter. The run's peak is the largest stage peak: reading the process's own high-water mark after
        the run would give the last stage's only."""
        if self.peaks:
            log.info("peak memory %.3f GB beyond the process base of %.3f GB (%d parameters)", self.highest / 1e9,
                     self.base / 1e9, params)
            parts = ", ".join(f"{n} {v['bytes_per_param']:.1f} (holds {v['held_bytes_per_param']:.1f})"
                              for n, v in self.table(params).items())
            log.info("peak memory by stage, bytes per parameter: %s", parts)

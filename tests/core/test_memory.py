"""Per-stage peak memory (engine.core.memory): each stage sees its own high-water mark; the run peak is the largest."""

from __future__ import annotations

import logging

import pytest
import torch

from engine.core.memory import StageMemory, reset_peak

MB = 2**20


@pytest.mark.skipif(not reset_peak(torch.device("cpu")), reason="needs Linux /proc/self/clear_refs")
def test_stage_peaks_are_their_own_and_the_run_peak_is_the_largest(caplog: pytest.LogCaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)  # a run's rank log turns it off
    memory = StageMemory(torch.device("cpu"))
    with memory.stage("big"):
        held = torch.ones(200 * MB // 4)  # touched: 200 MB resident
        del held
    with memory.stage("small"):
        kept = torch.ones(20 * MB // 4)
    assert memory.peaks["big"] >= 190 * MB
    assert memory.peaks["small"] < memory.peaks["big"] - 100 * MB  # the counter was reset: not the big stage's peak
    assert memory.held["small"] >= 15 * MB and kept.sum() > 0
    assert memory.highest == memory.peaks["big"]
    with caplog.at_level(logging.INFO, logger="engine"):
        memory.log(1_000_000)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("peak memory 0.2") and "beyond the process base" in line for line in lines)
    assert any("big 2" in line and "small " in line and "(holds " in line for line in lines)

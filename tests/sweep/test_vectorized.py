"""engine.sweep.vectorized alone: a model vmap cannot run gets no evaluator, with a logged reason (its whole run,
which falls back to the in-place path, and the K-points-per-pass runs against the in-place path are in
e2e/test_sweep_runs.py); choose_k takes a larger K only on a clear lead."""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest
import torch

from engine.sweep import vectorized
from engine.sweep.vectorized import K_GAIN, choose_k, make_evaluator
from helpers import DataDependent


def test_model_vmap_cannot_run_falls_back(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)  # runs route engine logs to rank files
    model = DataDependent()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    dirs = [[torch.randn_like(t) for t in theta] for _ in range(2)]
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    with caplog.at_level(logging.WARNING, logger="engine.sweep.vectorized"):
        assert make_evaluator(model, names, theta, dirs, batches) is None
    assert "using the in-place K=1 path" in caplog.text


class ClockedRunner:
    """A runner whose passes advance a fake clock by a set time per point for each K (the timing choose_k reads)."""

    def __init__(self, ms_per_point: dict[int, float]) -> None:
        self.ms, self.k, self.now = ms_per_point, 1, 0.0
        self.model, self.evaluator = torch.nn.Linear(1, 1), object()

    def run(self, coords: np.ndarray) -> None:
        self.now += self.ms[self.k] * len(coords) / 1e3


@pytest.mark.parametrize(("lead", "picked"), [(K_GAIN / 2, 1), (2 * K_GAIN, 2)])
def test_a_larger_k_needs_a_clear_lead(monkeypatch, lead, picked):
    runner = ClockedRunner({1: 10.0, 2: 10.0 * (1 - lead), 4: 12.0})
    monkeypatch.setattr(vectorized, "time", types.SimpleNamespace(perf_counter=lambda: runner.now))
    coords = np.zeros((8, 2))
    assert choose_k(runner, coords, 4) == picked  # type: ignore[arg-type]
    assert runner.k == picked

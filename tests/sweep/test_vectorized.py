"""engine.sweep.vectorized alone: a model vmap cannot run gets no evaluator, with a logged reason (its whole run,
which falls back to the in-place path, and the K-points-per-pass runs against the in-place path are in
e2e/test_sweep_runs.py)."""

from __future__ import annotations

import logging

import torch

from engine.sweep.vectorized import make_evaluator
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

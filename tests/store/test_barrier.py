"""The barrier of a path (Frankle et al. 2020) on hand-made profiles: the closed form of a known loss along t, its
standard error against a float64 computation from per-item values, accuracy's drop, and summary.json's entry."""

from __future__ import annotations

import numpy as np
import pytest

from engine.store.assemble import summarize
from engine.store.barrier import barrier
from engine.store.read import Surface

T = np.linspace(-0.5, 1.5, 41)  # t = 0 and t = 1 are grid points (indices 10 and 30)


def test_known_profile_equals_its_closed_form():
    """L(t) = 1 + 0.5 t + h t (1 - t): the line is 1 + 0.5 t, the rise h t (1 - t), max h / 4 at t = 1/2; points
    outside [0, 1] (where the rise is negative anyway, and beyond far higher) are never the barrier."""
    h = 0.8
    loss = 1 + 0.5 * T + h * T * (1 - T) + np.where(T > 1, 10.0, 0.0)
    got = barrier(T, loss.astype(np.float32))
    assert got["t"] == 0.5
    assert got["value"] == pytest.approx(h / 4, abs=1e-6)
    assert got["start"] == pytest.approx(1.0) and got["end"] == pytest.approx(1.5)
    skewed = barrier(T, T**3 * (1 - T))  # rise t^3 (1 - t): max at t = 3/4, 27/256
    assert skewed["t"] == 0.75 and skewed["value"] == pytest.approx(27 / 256, rel=1e-12)


def test_stderr_matches_float64_from_per_item_values():
    rng = np.random.default_rng(0)
    n = 500
    items = 1 + 0.3 * T[:, None] + 0.6 * T[:, None] * (1 - T[:, None]) + rng.normal(0, 0.5, (len(T), n))
    mean = items.mean(1)
    se = items.std(1, ddof=1) / np.sqrt(n)
    got = barrier(T, mean.astype(np.float32), se.astype(np.float32))
    line = (1 - T) * mean[10] + T * mean[30]
    inside = (T >= 0) & (T <= 1)
    k = int(np.argmax(np.where(inside, mean - line, -np.inf)))
    want_se = np.sqrt(se[k] ** 2 + ((1 - T[k]) * se[10]) ** 2 + (T[k] * se[30]) ** 2)
    assert got["t"] == T[k]
    assert got["value"] == pytest.approx(mean[k] - line[k], abs=1e-6)
    assert got["stderr"] == pytest.approx(want_se, rel=1e-6)
    assert got["z"] == pytest.approx(got["value"] / want_se, rel=1e-5)
    assert got["significant"] is True  # 0.15 against a standard error of about 0.03


def test_accuracy_barrier_is_its_drop_and_missing_ends_are_named():
    acc = 0.9 - 0.4 * T * (1 - T)
    got = barrier(T, acc, higher_is_better=True)
    assert got["t"] == 0.5 and got["value"] == pytest.approx(0.1)
    off = barrier(np.linspace(0.05, 0.95, 5), np.ones(5))
    assert off["value"] is None and "t = 0 and t = 1 must be grid points" in off["note"]


def test_summary_of_a_path_run_has_its_barrier():
    loss = 1 + T * (1 - T)
    metrics = {"loss": loss, "loss_stderr": np.full_like(T, 0.01), "accuracy": 0.9 - 0.2 * T * (1 - T),
               "accuracy_stderr": np.full_like(T, 0.02)}
    surface = Surface((T,), metrics, np.ones(1, bool), {"config": {"direction": {"kind": "interpolation"}}})
    out = summarize(surface)["barrier"]
    assert out["loss"]["value"] == pytest.approx(0.25) and out["accuracy"]["value"] == pytest.approx(0.05)
    assert out["loss"]["stderr"] == pytest.approx(0.01 * np.sqrt(1 + 0.25 + 0.25))
    plain = Surface((T,), metrics, np.ones(1, bool), {"config": {"direction": {"kind": "random"}}})
    assert "barrier" not in summarize(plain)

"""Convergence of the spectra: Ritz residual bounds against the exact eigenvalues of small float64 Hessians, the
summary's flags when a setting is too small, Hutch++'s and the SLQ moments' standard errors, the per-run densities,
and the default path's numbers bit for bit equal to the old call path's."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from exact import exact_hessian
from old_spectrum import old_spectrum
from torch import nn

from engine.config.schema import ADDED_DEFAULTS, HessianConfig, config_hash
from engine.core.dist import DistEnv
from engine.curvature.hessian import (
    HessianOperator,
    MatrixOperator,
    bounded_eigenpairs,
    hutchpp_estimate,
    hutchpp_trace,
)
from engine.curvature.spectra import Spectrum, compute_spectrum

MAIN = DistEnv(0, 1, 0, torch.device("cpu"))
SMALL = {"top_k": 3, "trace_samples": 6, "hutchpp_matvecs": 9, "slq_runs": 3, "slq_steps": 12}


def _mlp() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A 53-parameter tanh MLP in float64 with negative curvature, and three batches."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (40,))
    return model, [(x[:13], y[:13]), (x[13:30], y[13:30]), (x[30:], y[30:])]


def _conv() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A conv, eval-mode BatchNorm and linear net of 73 parameters in float64, two batches."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Softplus(), nn.Flatten(),
                          nn.Linear(27, 3)).double().eval()
    x = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    return model, [(x[:5], y[:5]), (x[5:], y[5:])]


PROBLEMS = {"mlp": _mlp, "conv_bn": _conv}


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("steps", [4, 8, 16, 30])
def test_ritz_bounds_hold_against_the_exact_eigenvalues(name: str, steps: int) -> None:
    model, batches = PROBLEMS[name]()
    exact = np.linalg.eigvalsh(exact_hessian(model, batches))
    op = HessianOperator(model, list(model.parameters()), batches, keep_graph=True)
    found = bounded_eigenpairs(op, k=3, steps=steps, seed=2)
    rounding = 1e-12 * np.abs(exact).max()
    for value, bound in zip(found.values.numpy(), found.bounds.numpy()):
        assert np.abs(exact - value).min() <= bound + rounding
    assert np.abs(exact - found.lambda_min).min() <= found.lambda_min_bound + rounding
    if steps <= 8:  # few steps: the bounds are wide, and still hold
        assert found.lambda_min_bound > 1e-3 * np.abs(exact).max()
    assert found.steps == steps


def test_bounds_shrink_to_rounding_over_the_whole_space() -> None:
    model, batches = _mlp()
    exact = np.linalg.eigvalsh(exact_hessian(model, batches))
    op = HessianOperator(model, list(model.parameters()), batches, keep_graph=True)
    found = bounded_eigenpairs(op, k=2, steps=op.size, seed=0)
    np.testing.assert_allclose(found.values.numpy(), exact[::-1][:2], rtol=1e-9)
    assert (found.bounds.numpy() < 1e-10 * np.abs(exact).max()).all()


def _spectrum(steps: int, **overrides: object) -> Spectrum:
    model, batches = _mlp()
    cfg = HessianConfig(steps=steps, rtol=None, **{**SMALL, **overrides})  # type: ignore[arg-type]
    return compute_spectrum(model, list(model.parameters()), batches, cfg, MAIN)


def test_summary_flags_a_step_cap_too_small_and_names_the_setting() -> None:
    short = _spectrum(4).numbers()["convergence"]
    assert not short["converged"] and "hessian.steps" in short["raise"]
    assert "lambda_min" in short["flagged"] and short["flagged"]["lambda_min"]["raise"] == "hessian.steps"
    assert short["flagged"]["lambda_min"]["relative"] > short["tolerance"] == 1e-2
    full = _spectrum(53).numbers()["convergence"]  # the whole Krylov space: every bound at rounding
    assert not any(k.startswith(("eigenvalues", "lambda_min")) for k in full["flagged"])
    loose = _spectrum(4, tolerance=10.0).numbers()["convergence"]
    assert loose["converged"] and loose["flagged"] == {} and loose["raise"] == []


def test_flags_name_traces_and_slq_runs() -> None:
    one_run = _spectrum(53, slq_runs=1, hutchpp_matvecs=3).numbers()
    flags = one_run["convergence"]["flagged"]
    assert flags["slq_mean"] == {"value": one_run["slq_moments"]["mean"], "error": None, "relative": None,
                                 "raise": "hessian.slq_runs"}  # one run: no standard error to judge
    assert flags["trace_hutchpp"]["raise"] == "hessian.hutchpp_matvecs" and one_run["trace_hutchpp_stderr"] is None
    assert flags["trace_hutchinson"]["raise"] == "hessian.trace_samples"  # 6 probes of a trace near 0


def test_hutchpp_stderr_covers_its_error() -> None:
    n = 60
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    values = torch.linspace(-1.0, 2.0, n, dtype=torch.float64) * 0.9 ** torch.arange(n, dtype=torch.float64)
    op = MatrixOperator(q @ torch.diag(values) @ q.T)
    exact = values.sum().item()
    within = 0
    for seed in range(40):
        trace, stderr = hutchpp_estimate(op, 30, seed=seed)
        assert trace == hutchpp_trace(op, 30, seed=seed) and stderr > 0
        within += abs(trace - exact) <= 2.5 * stderr
    assert within >= 32  # about 95% expected; the sketch's own randomness is not in the error
    exact_op = MatrixOperator(torch.diag(values[:5]))
    assert hutchpp_estimate(exact_op, 30, seed=0) == pytest.approx((values[:5].sum().item(), 0.0), abs=1e-12)


def test_slq_moments_and_per_run_densities() -> None:
    spectrum = _spectrum(10, slq_runs=6, slq_steps=53)
    m = spectrum.numbers()["slq_moments"]
    per_run = (spectrum.weights * spectrum.nodes).sum(1)
    assert m["mean"] == pytest.approx(per_run.mean(), rel=1e-12)
    assert m["mean_stderr"] == pytest.approx(per_run.std(ddof=1) / np.sqrt(6), rel=1e-12)
    assert m["trace"] == pytest.approx(53 * m["mean"]) and m["trace_stderr"] == pytest.approx(53 * m["mean_stderr"])
    model, batches = _mlp()
    hessian = exact_hessian(model, batches)
    assert abs(m["second"] - np.trace(hessian @ hessian) / 53) < 4 * m["second_stderr"]
    runs = spectrum.density_runs
    assert runs is not None and runs.shape == (6, spectrum.grid.size)
    np.testing.assert_allclose(runs.mean(0), spectrum.density, rtol=1e-12, atol=1e-15)
    for density in runs:  # each run's density integrates to about 1 (one normalization for all)
        assert 0.5 * np.sum((density[1:] + density[:-1]) * np.diff(spectrum.grid)) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("rtol", [None, 1e-5])
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_defaults_give_the_old_numbers_bit_for_bit(name: str, rtol: float | None) -> None:
    cfg = HessianConfig(steps=30, rtol=rtol, top_k=3, trace_samples=10, hutchpp_matvecs=12, slq_runs=3,
                        slq_steps=20)
    model, batches = PROBLEMS[name]()
    new = compute_spectrum(model, list(model.parameters()), batches, cfg, MAIN, progress=True)
    model, batches = PROBLEMS[name]()
    old = old_spectrum(model, list(model.parameters()), batches, cfg)
    for key, value in old.items():
        got = getattr(new, key)
        assert np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value, key
    assert new.blocks is None and new.matrix == "hessian"


def test_new_hessian_keys_at_their_defaults_keep_the_config_hash() -> None:
    resolved = {"model": {"name": "mlp"}, "hessian": {"curvature": True, "curvature_steps": 20, "samples": 512,
                                                      "seed": 0, "rtol": 1e-5}}
    old = copy.deepcopy(resolved)
    for key in ("matrix", "blocks", "tolerance"):
        assert f"hessian.{key}" in ADDED_DEFAULTS
        resolved["hessian"][key] = getattr(HessianConfig(), key)
    assert config_hash(resolved) == config_hash(old)
    resolved["hessian"].update({"matrix": "ggn", "blocks": "layer", "tolerance": 0.5})  # spectrum only: no store
    assert config_hash(resolved) == config_hash(old)  # values change with them, so no refusal

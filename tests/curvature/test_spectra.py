"""engine.curvature.spectra with progress: the spectrum's bar over its Hessian-vector products (planned, or closed at
an early Lanczos stop) and the Hessian directions' bar, on rank 0 only, with numbers bitwise equal to a silent run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from engine.config.schema import HessianConfig
from engine.core.dist import DistEnv
from engine.curvature.spectra import Spectrum, compute_spectrum, hessian_directions

MAIN = DistEnv(0, 1, 0, torch.device("cpu"))
OTHER = DistEnv(1, 2, 1, torch.device("cpu"))  # rank 1 of 2, no process group: its own batches, its own products
SMALL = {"top_k": 2, "trace_samples": 4, "hutchpp_matvecs": 6, "slq_runs": 2, "slq_steps": 5}


def _problem() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A 53-parameter MLP in float64 and three batches of a seeded classification set."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(40, 6, dtype=torch.float64) * 2
    y = torch.randint(0, 3, (40,))
    return model, [(x[:13], y[:13]), (x[13:30], y[13:30]), (x[30:], y[30:])]


def _spectrum(cfg: HessianConfig, progress: bool, env: DistEnv = MAIN) -> Spectrum:
    model, batches = _problem()
    return compute_spectrum(model, list(model.parameters()), batches, cfg, env, progress=progress)


def _last_count(err: str) -> tuple[int, int]:
    """(done, total) of the bar's last line."""
    done, total = re.findall(r"(\d+)/(\d+)", err)[-1]
    return int(done), int(total)


def _same(a: Spectrum, b: Spectrum) -> None:
    for name, value in vars(a).items():
        if name == "seconds":
            continue
        other = vars(b)[name]
        assert np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other, name


def test_spectrum_bar_reaches_the_planned_products_and_changes_no_number(capfd: pytest.CaptureFixture[str]) -> None:
    cfg = HessianConfig(steps=10, rtol=None, **SMALL)
    silent = _spectrum(cfg, progress=False)
    assert capfd.readouterr() == ("", "")
    shown = _spectrum(cfg, progress=True)
    out, err = capfd.readouterr()
    assert shown.matvecs == 10 + 4 + 6 + 2 * 5  # lanczos + hutchinson + hutch++ + slq, all planned products made
    assert out == "" and "spectrum" in err and _last_count(err) == (30, 30)
    assert all(phase in err for phase in ("lanczos", "hutchinson", "hutch++", "slq"))
    _same(shown, silent)


def test_spectrum_bar_closes_at_an_early_lanczos_stop(capfd: pytest.CaptureFixture[str]) -> None:
    cfg = HessianConfig(steps=50, rtol=1e-3, **SMALL)
    shown = _spectrum(cfg, progress=True)
    err = capfd.readouterr().err
    assert shown.matvecs < 50 + 4 + 6 + 2 * 5  # Lanczos converged before its 50 steps
    assert "0/70" in err and _last_count(err) == (shown.matvecs, shown.matvecs)
    _same(shown, _spectrum(cfg, progress=False))


def test_spectrum_bar_only_on_rank_0(capfd: pytest.CaptureFixture[str]) -> None:
    _spectrum(HessianConfig(steps=10, **SMALL), progress=True, env=OTHER)
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("rtol", [None, 1e-3])
def test_hessian_directions_bar_over_lanczos(capfd: pytest.CaptureFixture[str], rtol: float | None) -> None:
    cfg = HessianConfig(steps=40, rtol=rtol, **SMALL)
    model, batches = _problem()
    tensors = list(model.parameters())
    silent = hessian_directions(model, tensors, batches, cfg, MAIN, 2)
    assert capfd.readouterr() == ("", "")
    shown = hessian_directions(model, tensors, batches, cfg, MAIN, 2, progress=True)
    err = capfd.readouterr().err
    done, total = _last_count(err)
    assert "hessian directions" in err and done == total and (done == 40 if rtol is None else done < 40)
    assert all(torch.equal(a, b) for d, e in zip(shown, silent) for a, b in zip(d, e))
    hessian_directions(model, tensors, batches, cfg, OTHER, 2, progress=True)
    assert capfd.readouterr() == ("", "")

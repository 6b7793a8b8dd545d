"""Spectra and curvature maps as stages of a run, against the exact float64 Hessian of the same model and samples.

Covers: `landscape-spectrum`'s store, its resume and refusal; a sweep's curvature map and spectrum, with
summary and figures; Hessian-eigenvector directions; and 2 torchrun ranks against 1 process.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from engine.app.landscape import run_landscape
from engine.app.spectrum import run_spectrum
from engine.core.errors import UserError
from engine.curvature.hessian import HessianOperator
from engine.sources.checkpoints import load_checkpoint
from engine.sources.data import load_data
from engine.sources.models import build_model
from engine.sources.splits import subsample
from engine.store.read import read_directions, read_surface
from engine.store.spectra import read_spectrum
from helpers import make_cfg, torchrun

SMALL = ["model=mlp", "model.hidden=[8]", "eval.samples=96", "hessian.samples=48", "hessian.batch_size=20",
         "hessian.top_k=3"]
SWEEP = ["grid.resolution=[5,3]", "grid.tile=[3,2]", "grid.preview=0", "hessian.curvature=true",
         "hessian.spectrum=true", "hessian.curvature_steps=40"]


def _exact(cfg, checkpoint):
    """The exact float64 Hessian of the mean loss over the run's Hessian samples, and the float64 model."""
    data = load_data(cfg.data)
    split = subsample(subsample(data.test, cfg.eval.samples, cfg.data.seed), cfg.hessian.samples, cfg.data.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    load_checkpoint(model, checkpoint)
    model = model.double().eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = split.x.double(), split.y

    def loss(v: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (t.view(s) for t, s in zip(v.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy(), model, (x, y)


def test_spectrum_command_matches_exact_hessian_resumes_and_refuses(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, "name=spec", "plot.enabled=true", "plot.formats=[png]")
    path, spectrum = run_spectrum(cfg, resolved, log=False)
    hessian, _, _ = _exact(cfg, tmp_path / "spec" / "checkpoints" / "final.pt")
    exact = np.linalg.eigvalsh(hessian)
    np.testing.assert_allclose(spectrum.eigenvalues, exact[::-1][:3], rtol=1e-4)
    assert spectrum.lambda_min == pytest.approx(exact[0], rel=1e-3, abs=1e-5)
    assert abs(spectrum.trace - np.trace(hessian)) < 4 * spectrum.trace_stderr
    assert spectrum.trace_hutchpp == pytest.approx(np.trace(hessian), rel=0.1)
    stored = read_spectrum(path)
    assert stored is not None and np.array_equal(stored.eigenvalues, spectrum.eigenvalues)
    for i, v in enumerate(stored.eigenvectors):  # unit eigenvectors: H v = lambda v
        assert np.linalg.norm(hessian @ v - exact[::-1][i] * v) < 1e-3 * abs(exact[-1])
    assert (tmp_path / "spec" / "spectrum.json").exists()
    figures = {p.name for p in (tmp_path / "spec" / "figures").iterdir()}
    assert {"hessian_density.png", "hessian_eigenvalues.png"} <= figures
    _, again = run_spectrum(cfg, resolved, log=False)  # resumed from the store: same numbers, no recompute
    assert again.seconds == spectrum.seconds and np.array_equal(again.eigenvalues, spectrum.eigenvalues)
    other, other_resolved = make_cfg(tmp_path, *SMALL, "name=spec", "hessian.seed=5")
    with pytest.raises(UserError, match=r"spectrum of other settings; set store\.overwrite=true"):
        run_spectrum(other, other_resolved, log=False)


def test_sweep_curvature_map_and_spectrum(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, *SWEEP, "name=curv", "plot.enabled=true", "plot.formats=[png]")
    result = run_landscape(cfg, resolved, log=False)
    surface = read_surface(result.store)
    top, bottom, ratio = (surface.metrics[f"hessian/{k}"] for k in ("lambda_max", "lambda_min", "ratio"))
    assert top.shape == (5, 3) and np.isfinite(top).all()
    assert result.summary["curvature"]["center"] and surface.coords[1][1] == 0.0  # the center is theta*
    np.testing.assert_allclose(ratio, np.abs(bottom / top), rtol=1e-6)
    spectrum = read_spectrum(result.store)
    assert spectrum is not None
    center = result.summary["curvature"]["center"]
    assert center["lambda_max"] == pytest.approx(spectrum.eigenvalues[0], rel=1e-4)
    assert result.summary["spectrum"]["lambda_max"] == pytest.approx(float(spectrum.eigenvalues[0]))
    _, model, (x, y) = _exact(cfg, tmp_path / "curv" / "checkpoints" / "final.pt")
    corner = (float(surface.coords[0][0]), float(surface.coords[1][-1]))  # far from theta*: a different Hessian
    directions = read_directions(result.store)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p += sum(c * d[name].double() for c, d in zip(corner, directions))
    exact = np.linalg.eigvalsh(_hessian_of(model, x, y))
    assert top[0, -1] == pytest.approx(exact[-1], rel=1e-3)
    assert bottom[0, -1] == pytest.approx(exact[0], rel=1e-2, abs=1e-4)
    names = {p.name for p in result.figures}
    assert {"hessian_ratio.png", "hessian_lambda_max.png", "hessian_density.png", "contour.png"} <= names


def _hessian_of(model, x, y) -> np.ndarray:
    """The exact Hessian of a float64 model's mean loss, by dense autograd (small models only)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (t.view(s) for t, s in zip(v.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def test_hessian_eigenvector_directions(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, "name=eig", "direction=hessian", "grid.resolution=[3,3]",
                             "grid.x=[-0.1,0.1]", "grid.y=[-0.1,0.1]")
    result = run_landscape(cfg, resolved, log=False)
    d0, d1 = (torch.cat([t.reshape(-1) for t in d.values()]).double() for d in read_directions(result.store))
    assert d0.norm().item() == pytest.approx(1.0, abs=1e-5) and abs(torch.dot(d0, d1).item()) < 1e-4
    _, model, (x, y) = _exact(cfg, tmp_path / "eig" / "checkpoints" / "final.pt")
    op = HessianOperator(model, list(model.parameters()), [(x, y)])
    for d in (d0, d1):
        hd = op.matvec(d)
        rayleigh = torch.dot(d, hd)
        assert (hd - rayleigh * d).norm().item() < 1e-3 * hd.norm().item()  # an eigenvector
    top = np.linalg.eigvalsh(_hessian_of(model, x, y))[::-1][:2]
    assert torch.dot(d0, op.matvec(d0)).item() == pytest.approx(top[0], rel=1e-4)
    assert torch.dot(d1, op.matvec(d1)).item() == pytest.approx(top[1], rel=1e-4)


def test_curvature_and_spectrum_of_two_ranks_equal_one(tmp_path):
    one_cfg, one_resolved = make_cfg(tmp_path, *SMALL, *SWEEP, "hessian.blocks=layer", "name=one")
    one = run_landscape(one_cfg, one_resolved, log=False)
    ckpt = tmp_path / "one" / "checkpoints" / "final.pt"
    done = torchrun(2, *SMALL, *SWEEP, "hessian.blocks=layer", f"model.checkpoint={ckpt}", "name=two",
                    f"out_dir={tmp_path}", "grid.preview=0", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = read_surface(one.store), read_surface(tmp_path / "two" / "landscape.zarr")
    for metric in ("hessian/lambda_max", "hessian/lambda_min", "hessian/ratio"):
        np.testing.assert_allclose(b.metrics[metric], a.metrics[metric], rtol=1e-5, atol=1e-7)
    sa, sb = read_spectrum(one.store), read_spectrum(tmp_path / "two" / "landscape.zarr")
    assert sa is not None and sb is not None
    np.testing.assert_allclose(sb.eigenvalues, sa.eigenvalues, rtol=1e-5)  # products all-reduced over 2 ranks
    assert sb.trace == pytest.approx(sa.trace, rel=1e-5)
    ba, bb = sa.blocks, sb.blocks  # per-layer blocks: the same data-parallel products
    assert ba is not None and bb is not None and ba.names == bb.names == ["layers.0", "head"]
    for name in ("lambda_max", "lambda_min", "trace"):
        np.testing.assert_allclose(getattr(bb, name), getattr(ba, name), rtol=1e-5, atol=1e-6 * ba.lambda_max.max())
    assert one.summary["spectrum"]["blocks"]["names"] == ba.names and "convergence" in one.summary["spectrum"]

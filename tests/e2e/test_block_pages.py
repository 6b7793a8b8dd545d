"""Per-block curvature (hessian.blocks) wherever a run's numbers are shown: landscape-spectrum's report.html, the
sweep's interactive page and report, and engine.spectrum's Dataset; and the report lists the adaptive sharpness
settings once."""

from __future__ import annotations

import json
import re

import numpy as np

import engine
from engine.app.landscape import run_landscape
from engine.app.spectrum import run_spectrum
from engine.store.spectra import read_spectrum
from helpers import make_cfg, trained_model

SMALL = ["model=mlp", "model.hidden=[8]", "eval.samples=96", "hessian.samples=48", "hessian.batch_size=20",
         "hessian.top_k=3", "hessian.blocks=layer", "plot.enabled=true", "plot.formats=[png]"]


def _block_rows(page: str) -> dict[str, list[float]]:
    """{block: [parameters, lambda_max, bound, lambda_min, bound, trace, stderr]} read from a page's block table."""
    rows = re.findall(r"<tr data-block='([^']+)'><th>[^<]*</th>(.*?)</tr>", page)
    return {name: [float(v) for v in re.findall(r"data-value='([^']+)'", cells)] for name, cells in rows}


def _same_blocks(rows: dict[str, list[float]], numbers: dict) -> None:
    assert list(rows) == numbers["names"]
    for i, name in enumerate(numbers["names"]):
        want = [numbers[k][i] for k in ("sizes", "lambda_max", "lambda_max_bound", "lambda_min", "lambda_min_bound",
                                        "trace", "trace_stderr")]
        np.testing.assert_allclose(rows[name], want, rtol=1e-12)


def test_spectrum_command_writes_a_report_with_its_blocks(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, "name=spec")
    spectrum = run_spectrum(cfg, resolved, log=False)[1]
    report = (tmp_path / "spec" / "report.html").read_text()
    assert spectrum.blocks is not None
    _same_blocks(_block_rows(report), spectrum.blocks.numbers())
    assert "hessian_blocks.png" in report and "Provenance" in report and "Resolved config" in report
    numbers = json.loads((tmp_path / "spec" / "spectrum.json").read_text())
    assert f"data-value='{json.dumps(numbers['lambda_max'])}'" in report


def test_sweep_page_and_report_show_blocks_and_adaptive_settings_once(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, "grid.resolution=[3,3]", "grid.tile=[3,3]", "grid.preview=0",
                             "hessian.spectrum=true", "summary.adaptive_radius=0.01", "summary.adaptive_steps=2",
                             "summary.adaptive_samples=2", "summary.epsilon=null", "name=sweep")
    result = run_landscape(cfg, resolved, log=False)
    spectrum = read_spectrum(result.store)
    assert spectrum is not None and spectrum.blocks is not None
    page = (result.run_dir / "figures" / "landscape.html").read_text()
    _same_blocks(_block_rows(page), spectrum.blocks.numbers())
    assert "blocks-eigenvalues-plot" in page and "blocks-trace-plot" in page
    report = (result.run_dir / "report.html").read_text()
    _same_blocks(_block_rows(report), spectrum.blocks.numbers())
    adaptive = json.loads((result.run_dir / "summary.json").read_text())["sharpness"]["adaptive"]
    assert "settings" not in adaptive and adaptive["radius"] == 0.01
    keys = re.findall(r"data-key='(sharpness\.adaptive\.[^']+)'", report)
    assert keys and len(keys) == len(set(keys)) and not any(".settings." in k for k in keys)
    assert report.count("data-key='sharpness.adaptive.radius'") == 1


def test_engine_spectrum_returns_the_blocks(tmp_path):
    cfg, resolved = make_cfg(tmp_path, *SMALL, "name=trained")
    one = run_spectrum(cfg, resolved, log=False)[1]
    model, split = trained_model(cfg, type("R", (), {"run_dir": tmp_path / "trained"})())
    found = engine.spectrum(model, (split.x, split.y), **{
        "hessian.samples": 48, "hessian.batch_size": 20, "hessian.top_k": 3, "hessian.blocks": "layer",
        "plot.enabled": False, "out_dir": tmp_path / "api"})
    assert one.blocks is not None
    assert list(found["block"].values) == one.blocks.names and found.attrs["blocks_kind"] == "layer"
    for name in one.blocks.ARRAYS:
        np.testing.assert_allclose(found[f"block_{name}"].values, getattr(one.blocks, name), rtol=1e-4, atol=1e-6)
    assert found["block_sizes"].values.sum() == sum(p.numel() for p in model.parameters())
    top = float(found["eigenvalues"][0])  # a diagonal block's lambda_max is at most the whole Hessian's
    assert float(found["block_lambda_max"].max()) <= top + 1e-3 * abs(top)

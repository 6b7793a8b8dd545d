"""engine.store.spectra: a spectrum with Ritz bounds, per-run densities, Hutch++'s error and per-block curvature
written and read back; a store written before those existed still read, summarized and drawn; which hessian
settings count as the same spectrum (added keys at their defaults, hessian.tolerance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from engine.config.schema import PlotConfig
from engine.curvature.blocks import BlockSpectra
from engine.curvature.spectra import Spectrum
from engine.figures.draw import draw
from engine.store.assemble import assemble
from engine.store.spectra import (
    hessian_settings,
    read_spectrum,
    same_numbers,
    set_tolerance,
    stored_spectrum_config,
    write_spectrum,
    write_spectrum_store,
)
from store_fixtures import make_store

OLD_SETTINGS = {"spectrum": True, "curvature": False, "samples": 512, "batch_size": 128, "keep_graph": True,
                "top_k": 3, "steps": 60, "curvature_steps": 20, "rtol": 1e-5, "trace_samples": 100,
                "hutchpp_matvecs": 99, "slq_runs": 3, "slq_steps": 60, "sigma": 0.01, "seed": 0}
NEW_SETTINGS = {**OLD_SETTINGS, "matrix": "hessian", "blocks": None, "tolerance": 0.01}


def _blocks() -> BlockSpectra:
    return BlockSpectra("layer", ["fc1", "fc2"], np.array([40, 9]), np.array([2.0, 0.5]), np.array([1e-8, 0.2]),
                        np.array([-0.1, 0.0]), np.array([1e-6, 1e-9]), np.array([3.0, 1.0]), np.array([0.01, 0.0]),
                        77)


def _spectrum(new: bool = True) -> Spectrum:
    rng = np.random.default_rng(0)
    nodes = np.sort(rng.normal(size=(3, 8)), axis=1)
    weights = rng.dirichlet(np.ones(8), size=3)
    grid = np.linspace(-3, 3, 50)
    density = np.exp(-grid**2)
    base: list[Any] = [np.array([3.0, 2.0, 1.0]), rng.normal(size=(3, 49)).astype(np.float32), -0.5, 4.0, 0.2, 4.1,
                       grid, density, nodes, weights, 49, 321, 1.5]
    if not new:
        return Spectrum(*base)
    return Spectrum(*base, np.array([1e-9, 1e-3, 0.5]), 0.02, 0.05, np.stack([density * s for s in (0.9, 1.0, 1.1)]),
                    "ggn", 0.05, _blocks())


def _same(a: Spectrum, b: Spectrum) -> None:
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, BlockSpectra):
            assert isinstance(other, BlockSpectra) and value.numbers() == other.numbers()
        else:
            assert np.array_equal(value, other) if isinstance(value, np.ndarray) else value == other, name


def test_new_arrays_and_blocks_round_trip(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [5])
    written = _spectrum()
    write_spectrum(store, written, NEW_SETTINGS)
    read = read_spectrum(store)
    assert read is not None
    _same(written, read)
    group = zarr.open_group(store, mode="r")["hessian"]
    assert group["eigenvalue_bounds"].metadata.dimension_names == ("rank",)
    assert group["density_runs"].shape == (3, 50) and group["blocks/lambda_max"].shape == (2,)
    assert dict(group["blocks"].attrs)["names"] == ["fc1", "fc2"]
    numbers = read.numbers()
    assert numbers["blocks"]["names"] == ["fc1", "fc2"] and numbers["matrix"] == "ggn"
    flags = numbers["convergence"]
    assert flags["tolerance"] == 0.05 and set(flags["flagged"]) >= {"eigenvalues[2]", "blocks[fc2].lambda_max"}
    assert "eigenvalues[0]" not in flags["flagged"] and "blocks[fc1].trace" not in flags["flagged"]
    write_spectrum(store, _spectrum(new=False), OLD_SETTINGS)  # a spectrum without them replaces them all
    assert not any(k in zarr.open_group(store, mode="r")["hessian"] for k in ("blocks", "density_runs"))


def test_spectrum_only_store_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "spectrum.zarr"
    written = _spectrum()
    write_spectrum_store(path, written, {"fingerprint": "f"}, {"hessian": NEW_SETTINGS})
    read = read_spectrum(path)
    assert read is not None
    _same(written, read)


def _old_write(store: Path, spectrum: Spectrum) -> None:
    """The hessian/ group exactly as the engine wrote it before bounds, per-run densities and blocks."""
    group = zarr.open_group(store, mode="r+").require_group("hessian")
    arrays = {"eigenvalues": spectrum.eigenvalues, "eigenvectors": spectrum.eigenvectors,
              "density_grid": spectrum.grid, "density": spectrum.density, "slq_nodes": spectrum.nodes,
              "slq_weights": spectrum.weights}
    for name, array in arrays.items():
        group.create_array(name, shape=array.shape, dtype=array.dtype, overwrite=True)[...] = array
    numbers = {"lambda_max": 3.0, "lambda_min": spectrum.lambda_min, "ratio": 1 / 6, "top_eigenvalues": [3.0, 2.0, 1.0],
               "trace_hutchinson": spectrum.trace, "trace_stderr": spectrum.trace_stderr,
               "trace_hutchpp": spectrum.trace_hutchpp, "params": 49, "hessian_vector_products": 321, "seconds": 1.5}
    group.attrs.update({"spectrum": numbers, "spectrum_config": OLD_SETTINGS})


def test_a_store_written_before_reads_summarizes_and_draws(tmp_path: Path) -> None:
    store = make_store(tmp_path / "run" / "landscape.zarr", [5, 4])
    old = _spectrum(new=False)
    _old_write(store, old)
    read = read_spectrum(store)
    assert read is not None
    _same(old, read)  # the added fields: None, the defaults
    summary = assemble(store)["spectrum"]
    assert summary["lambda_max"] == 3.0 and summary["matrix"] == "hessian" and "blocks" not in summary
    assert "eigenvalue_bounds" not in summary and "trace_hutchpp_stderr" not in summary
    flags = summary["convergence"]
    assert not any(k.startswith(("eigenvalues", "lambda_min", "trace_hutchpp")) for k in flags["flagged"])
    assert flags["flagged"]["trace_hutchinson"]["relative"] == pytest.approx(0.05)  # judged: its error was stored
    json.dumps(summary, allow_nan=False)
    figures = {p.name for p in draw(store, tmp_path / "figs", PlotConfig(formats=["png"], html=False))}
    assert {"hessian_density.png", "hessian_eigenvalues.png"} <= figures and "hessian_blocks.png" not in figures
    assert stored_spectrum_config(store) == OLD_SETTINGS


def test_settings_that_change_no_stored_number() -> None:
    assert hessian_settings(NEW_SETTINGS) == OLD_SETTINGS  # added keys at their defaults: an old store's
    assert same_numbers(OLD_SETTINGS, NEW_SETTINGS)
    assert same_numbers(OLD_SETTINGS, {**NEW_SETTINGS, "tolerance": 0.5})  # re-judged, not recomputed
    assert not same_numbers(OLD_SETTINGS, {**NEW_SETTINGS, "blocks": "layer"})
    assert not same_numbers(OLD_SETTINGS, {**NEW_SETTINGS, "matrix": "ggn"})
    assert not same_numbers(None, NEW_SETTINGS)
    wrapped = {"fingerprint": "f", "hessian": OLD_SETTINGS}  # a spectrum-only store's settings
    assert same_numbers(wrapped, {"fingerprint": "f", "hessian": {**NEW_SETTINGS, "tolerance": 0.5}})
    assert not same_numbers(wrapped, {"fingerprint": "g", "hessian": NEW_SETTINGS})


def test_set_tolerance_rejudges_the_stored_numbers(tmp_path: Path) -> None:
    store = make_store(tmp_path / "landscape.zarr", [5])
    write_spectrum(store, _spectrum(), NEW_SETTINGS)
    before = read_spectrum(store)
    assert before is not None and not before.numbers()["convergence"]["converged"]
    set_tolerance(store, 100.0, {**NEW_SETTINGS, "tolerance": 100.0})
    after = read_spectrum(store)
    assert after is not None and after.tolerance == 100.0
    flags = after.numbers()["convergence"]
    assert flags["tolerance"] == 100.0 and "eigenvalues[2]" in before.numbers()["convergence"]["flagged"]
    assert "eigenvalues[2]" not in flags["flagged"] and "blocks[fc2].lambda_max" not in flags["flagged"]
    assert np.array_equal(after.eigenvalues, before.eigenvalues)
    assert stored_spectrum_config(store) == {**NEW_SETTINGS, "tolerance": 100.0}

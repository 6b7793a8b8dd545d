"""Spectra in a store: the hessian/ group of a landscape store, and the spectrum-only store of `landscape-spectrum`.

The arrays (eigenvalues and their Ritz bounds, eigenvectors, the SLQ density, each run's density and the
quadrature) go under hessian/, per-block curvature under hessian/blocks/ (one entry per block, names in its
attributes), the numbers and the settings they were computed with into the group's attributes, so a repeated run
can tell whether to recompute. A store written before bounds, per-run densities or blocks existed reads with
those left None.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from engine.config.schema import ADDED_DEFAULTS
from engine.core.errors import UserError
from engine.curvature.blocks import BlockSpectra
from engine.curvature.spectra import DEFAULT_TOLERANCE, Spectrum
from engine.store.integrity import read_whole
from engine.store.layout import SPECTRUM_FORMAT, open_existing

_ARRAYS = ("eigenvalues", "eigenvectors", "density_grid", "density", "slq_nodes", "slq_weights")
_ADDED = ("eigenvalue_bounds", "density_runs")  # arrays a store written before them lacks
BLOCKS = "blocks"  # the subgroup of hessian/ with per-block curvature
IGNORED_SETTINGS = ("tolerance",)  # hessian settings that change no stored number, only what summary.json flags


def write_spectrum(path: str | Path, spectrum: Spectrum, cfg: dict[str, Any]) -> None:
    """Write a spectrum into the hessian/ group of the landscape store at path (replacing an earlier one)."""
    _write_group(open_existing(path, "r+"), spectrum, cfg)


def _write_group(root: zarr.Group, spectrum: Spectrum, cfg: dict[str, Any]) -> None:
    """The arrays under root's hessian/ group; the numbers and the hessian settings `cfg` in its attributes."""
    group = root.require_group("hessian")
    values = (spectrum.eigenvalues, spectrum.eigenvectors, spectrum.grid, spectrum.density, spectrum.nodes,
              spectrum.weights, spectrum.eigenvalue_bounds, spectrum.density_runs)
    dims = (("rank",), ("rank", "param"), ("eigenvalue",), ("eigenvalue",), ("run", "node"), ("run", "node"),
            ("rank",), ("run", "eigenvalue"))
    for name, array, dim in zip(_ARRAYS + _ADDED, values, dims):
        if array is not None:
            _array(group, name, array, dim)
        elif name in group:
            del group[name]  # an earlier spectrum's, which this one replaces
    if BLOCKS in group:
        del group[BLOCKS]
    if spectrum.blocks is not None:
        blocks = group.create_group(BLOCKS)
        for name in BlockSpectra.ARRAYS:
            _array(blocks, name, np.asarray(getattr(spectrum.blocks, name)), ("block",))
        blocks.attrs.update({"kind": spectrum.blocks.kind, "names": list(spectrum.blocks.names),
                             "hessian_vector_products": spectrum.blocks.matvecs})
    group.attrs.update({"spectrum": spectrum.numbers(), "spectrum_config": cfg})


def _array(group: zarr.Group, name: str, array: np.ndarray, dims: tuple[str, ...]) -> None:
    """A new array name in group holding `array`, replacing one of that name."""
    group.create_array(name, shape=array.shape, dtype=array.dtype, overwrite=True, dimension_names=dims)[...] = array


def read_spectrum(path: str | Path) -> Spectrum | None:
    """The spectrum stored under hessian/ of a store, or None when it has none."""
    try:
        root = zarr.open_group(path, mode="r")
        group = root["hessian"]
    except (KeyError, FileNotFoundError):
        return None
    if not isinstance(group, zarr.Group) or "spectrum" not in group.attrs:
        return None
    a = {name: read_whole(root, Path(path), f"hessian/{name}") for name in _ARRAYS + _ADDED if name in group}
    n = dict(cast("dict[str, Any]", group.attrs["spectrum"]))
    pp_stderr = None  # an older store's: Hutch++ had no error
    if "trace_hutchpp_stderr" in n:  # None in JSON: NaN, too few probes for an error
        pp_stderr = math.nan if n["trace_hutchpp_stderr"] is None else float(n["trace_hutchpp_stderr"])
    return Spectrum(a["eigenvalues"], a["eigenvectors"], n["lambda_min"], n["trace_hutchinson"], n["trace_stderr"],
                    n["trace_hutchpp"], a["density_grid"], a["density"], a["slq_nodes"], a["slq_weights"],
                    n["params"], n["hessian_vector_products"], n["seconds"], a.get("eigenvalue_bounds"),
                    n.get("lambda_min_bound"), pp_stderr,
                    a.get("density_runs"), n.get("matrix", "hessian"),
                    n.get("convergence", {}).get("tolerance", DEFAULT_TOLERANCE), _read_blocks(group))


def _read_blocks(group: zarr.Group) -> BlockSpectra | None:
    """The per-block curvature under hessian/blocks/, or None (none asked for, or an older store)."""
    if BLOCKS not in group:
        return None
    blocks = cast(zarr.Group, group[BLOCKS])
    a = {name: np.asarray(cast(zarr.Array, blocks[name])[...]) for name in BlockSpectra.ARRAYS}
    attrs = dict(blocks.attrs)
    return BlockSpectra(str(attrs["kind"]), [str(v) for v in cast(list, attrs["names"])], a["sizes"],
                        a["lambda_max"], a["lambda_max_bound"], a["lambda_min"], a["lambda_min_bound"], a["trace"],
                        a["trace_stderr"], int(cast(int, attrs["hessian_vector_products"])))


def stored_spectrum_config(path: str | Path) -> dict[str, Any] | None:
    """The hessian settings an existing spectrum in the store was computed with (None: no spectrum)."""
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r")["hessian"].attrs)
    except (KeyError, FileNotFoundError):
        return None
    return attrs.get("spectrum_config") if "spectrum" in attrs else None


def hessian_settings(hessian: dict[str, Any]) -> dict[str, Any]:
    """The hessian settings a spectrum is recorded and compared with: keys added after stores were first written
    are left out at their defaults, so a spectrum stored before them still counts as made with these settings."""
    missing = object()
    return {k: v for k, v in hessian.items() if ADDED_DEFAULTS.get(f"hessian.{k}", missing) != v}


def same_numbers(stored: dict[str, Any] | None, settings: dict[str, Any]) -> bool:
    """Whether hessian settings (or a spectrum-only store's settings, holding them under "hessian") give the same
    stored numbers: equal but for the settings that only change what is flagged (hessian.tolerance)."""
    def numbers_of(value: dict[str, Any]) -> dict[str, Any]:
        if isinstance(value.get("hessian"), dict):
            return {**value, "hessian": numbers_of(value["hessian"])}
        return {k: v for k, v in hessian_settings(value).items() if k not in IGNORED_SETTINGS}

    return stored is not None and numbers_of(stored) == numbers_of(settings)


def set_tolerance(path: str | Path, tolerance: float, settings: dict[str, Any]) -> None:
    """Judge the store's spectrum by another hessian.tolerance (its numbers unchanged) and record the settings."""
    spectrum = read_spectrum(path)
    if spectrum is None:
        return
    spectrum.tolerance = tolerance
    group = cast(zarr.Group, open_existing(path, "r+")["hessian"])
    group.attrs.update({"spectrum": spectrum.numbers(), "spectrum_config": settings})


def existing_spectrum(path: Path, settings: dict[str, Any], overwrite: bool) -> Spectrum | None:
    """The spectrum-only store's spectrum if it was made with these settings (judged by this run's
    hessian.tolerance); refuse (or clear, with overwrite) one made from other weights or settings."""
    if not path.exists():
        return None
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        attrs = {}
    if attrs.get("format") == SPECTRUM_FORMAT and same_numbers(attrs.get("settings"), settings):
        spectrum = read_spectrum(path)
        if spectrum is not None:
            spectrum.tolerance = float(settings["hessian"].get("tolerance", DEFAULT_TOLERANCE))
        return spectrum
    if not overwrite:
        what = "other weights" if attrs.get("settings", {}).get("fingerprint") != settings["fingerprint"] else \
            "other settings"
        raise UserError(f"{path} holds a spectrum of {what}; set store.overwrite=true to replace it, or pick name=")
    shutil.rmtree(path)
    return None


def write_spectrum_store(path: Path, spectrum: Spectrum, settings: dict[str, Any], config: dict[str, Any]) -> None:
    """A new spectrum-only store at path: the hessian/ group, and what it was computed from in the attributes."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    _write_group(root, spectrum, config["hessian"])
    root.attrs.update({"format": SPECTRUM_FORMAT, "settings": settings, "config": config})

"""Spectra in a store: the hessian/ group of a landscape store, and the spectrum-only store of `landscape-spectrum`.

The arrays (eigenvalues, eigenvectors, the SLQ density and its quadrature) go under hessian/, the numbers and the
settings they were computed with into the group's attributes, so a repeated run can tell whether to recompute.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from engine.core.errors import UserError
from engine.curvature.spectra import Spectrum
from engine.store.layout import SPECTRUM_FORMAT, open_existing

_ARRAYS = ("eigenvalues", "eigenvectors", "density_grid", "density", "slq_nodes", "slq_weights")


def write_spectrum(path: str | Path, spectrum: Spectrum, cfg: dict[str, Any]) -> None:
    """Write a spectrum into the hessian/ group of the landscape store at path (replacing an earlier one)."""
    _write_group(open_existing(path, "r+"), spectrum, cfg)


def _write_group(root: zarr.Group, spectrum: Spectrum, cfg: dict[str, Any]) -> None:
    """The arrays under root's hessian/ group; the numbers and the hessian settings `cfg` in its attributes."""
    group = root.require_group("hessian")
    values = (spectrum.eigenvalues, spectrum.eigenvectors, spectrum.grid, spectrum.density, spectrum.nodes,
              spectrum.weights)
    dims = (("rank",), ("rank", "param"), ("eigenvalue",), ("eigenvalue",), ("run", "node"), ("run", "node"))
    for name, array, dim in zip(_ARRAYS, values, dims):
        group.create_array(name, shape=array.shape, dtype=array.dtype, overwrite=True, dimension_names=dim)[...] = array
    group.attrs.update({"spectrum": spectrum.numbers(), "spectrum_config": cfg})


def read_spectrum(path: str | Path) -> Spectrum | None:
    """The spectrum stored under hessian/ of a store, or None when it has none."""
    try:
        group = zarr.open_group(path, mode="r")["hessian"]
    except (KeyError, FileNotFoundError):
        return None
    if not isinstance(group, zarr.Group) or "spectrum" not in group.attrs:
        return None
    a = {name: np.asarray(cast(zarr.Array, group[name])[...]) for name in _ARRAYS}
    n = dict(cast("dict[str, Any]", group.attrs["spectrum"]))
    return Spectrum(a["eigenvalues"], a["eigenvectors"], n["lambda_min"], n["trace_hutchinson"], n["trace_stderr"],
                    n["trace_hutchpp"], a["density_grid"], a["density"], a["slq_nodes"], a["slq_weights"],
                    n["params"], n["hessian_vector_products"], n["seconds"])


def stored_spectrum_config(path: str | Path) -> dict[str, Any] | None:
    """The hessian settings an existing spectrum in the store was computed with (None: no spectrum)."""
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r")["hessian"].attrs)
    except (KeyError, FileNotFoundError):
        return None
    return attrs.get("spectrum_config") if "spectrum" in attrs else None



def existing_spectrum(path: Path, settings: dict[str, Any], overwrite: bool) -> Spectrum | None:
    """The spectrum-only store's spectrum if it was made with these settings; refuse (or clear, with overwrite)
    one made from other weights or settings."""
    if not path.exists():
        return None
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        attrs = {}
    if attrs.get("format") == SPECTRUM_FORMAT and attrs.get("settings") == settings:
        return read_spectrum(path)
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

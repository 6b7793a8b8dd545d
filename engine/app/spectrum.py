"""`landscape-spectrum`: the Hessian spectra at theta* without a sweep, into <run dir>/spectrum.zarr.

Run: landscape-spectrum model=resnet20 data=synthetic hessian.samples=1024 hessian.top_k=10
     torchrun --nproc_per_node=4 -m engine.run_spectrum ...   (data-parallel Hessian-vector products)

Writes the store's hessian/ group (top-k eigenpairs, SLQ density and quadrature), spectrum.json and the
density and eigenvalue figures. The same command run again redraws without recomputing; other settings or
other weights are refused unless store.overwrite=true.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import zarr

from engine.app.landscape import prepare_model, rank_log, run_dir_of
from engine.config.schema import RunConfig
from engine.core.dist import check_same, init_distributed, on_main
from engine.core.errors import UserError
from engine.curvature.spectra import (
    Spectrum,
    compute_spectrum,
    hessian_batches,
    hessian_params,
    read_spectrum,
    spectrum_json,
)
from engine.curvature.spectra import write_spectrum as write_group
from engine.directions import vectors as dirs
from engine.sources.data import load_data, subsample
from engine.sources.models import state_fingerprint

FORMAT = "landscape-engine/spectrum/1"


def spectrum_settings(resolved: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """What a spectrum's numbers depend on: the weights, the data, the eval split and the hessian settings."""
    return {"fingerprint": fingerprint, "data": resolved["data"], "hessian": resolved["hessian"],
            "eval": {k: resolved["eval"][k] for k in ("split", "samples")}, "over": resolved["direction"]["over"]}


def _existing(path: Path, settings: dict[str, Any], overwrite: bool) -> Spectrum | None:
    """The stored spectrum if it was made with these settings; refuse (or clear, with overwrite) another one."""
    if not path.exists():
        return None
    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:
        attrs = {}
    if attrs.get("format") == FORMAT and attrs.get("settings") == settings:
        return read_spectrum(path)
    if not overwrite:
        what = "other weights" if attrs.get("settings", {}).get("fingerprint") != settings["fingerprint"] else \
            "other settings"
        raise UserError(f"{path} holds a spectrum of {what}; set store.overwrite=true to replace it, or pick name=")
    shutil.rmtree(path)
    return None


def run_spectrum(cfg: RunConfig, resolved: dict[str, Any], log: bool = True) -> tuple[Path, Spectrum]:
    """Train or load the model, compute its spectra at theta* (all ranks), and write store, JSON and figures."""
    from engine.figures.curvature import draw_density, draw_eigenvalues

    env = init_distributed(cfg.eval.device)
    say = print if (log and env.is_main) else (lambda *_: None)
    data = load_data(cfg.data)
    model = prepare_model(cfg, data, env, log=log and env.is_main)
    fingerprint = state_fingerprint(model)
    check_same(env, "model weights (fingerprints)", fingerprint)
    run_dir = run_dir_of(cfg)
    rank_log(run_dir, env)
    path = run_dir / "spectrum.zarr"
    settings = spectrum_settings(resolved, fingerprint)
    spectrum = _existing(path, settings, cfg.store.overwrite)
    if spectrum is not None:
        say(f"spectrum: already in {path}; redrawing")
    else:
        split = subsample(data.test if cfg.eval.split == "test" else data.train, cfg.eval.samples, cfg.data.seed)
        batches = hessian_batches(split, cfg.hessian, cfg.data.seed, env.device)
        params = hessian_params([t for _, t in dirs.perturbed_tensors(model, cfg.direction.over)])
        say(f"spectrum of {cfg.model.name} at theta* over {sum(len(y) for _, y in batches)} samples "
            f"({sum(p.numel() for p in params)} parameters, {env.world_size} rank(s))")
        spectrum = compute_spectrum(model, params, batches, cfg.hessian, env)

        def write() -> None:
            run_dir.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(path, mode="w", zarr_format=3)
            write_group(root, spectrum, resolved["hessian"])
            root.attrs.update({"format": FORMAT, "settings": settings, "config": resolved})

        on_main(env, write)
    if env.is_main:
        spectrum_json(spectrum, run_dir / "spectrum.json")
        title = f"{cfg.model.name} on {cfg.data.name}, Hessian at theta*"
        figures = run_dir / "figures"
        formats = list(cfg.plot.formats)
        if cfg.plot.enabled:
            draw_density(spectrum.grid, spectrum.density, figures, formats=formats, title=title)
            draw_eigenvalues(spectrum.eigenvalues, figures, formats=formats, title=title,
                             lambda_min=spectrum.lambda_min)
        n = spectrum.numbers()
        say(f"lambda_max {n['lambda_max']:.6g}, lambda_min {n['lambda_min']:.6g}, trace {n['trace_hutchinson']:.6g}"
            f" +- {n['trace_stderr']:.2g} (Hutch++ {n['trace_hutchpp']:.6g}); {n['hessian_vector_products']} "
            f"Hessian-vector products in {n['seconds']:.1f} s\nstore:   {path}\nsummary: {run_dir / 'spectrum.json'}")
    return path, spectrum


"""`landscape-spectrum`: the Hessian spectra at theta* without a sweep, into <run dir>/spectrum.zarr.

Run: landscape-spectrum model=resnet20 data=synthetic hessian.samples=1024 hessian.top_k=10
     torchrun --nproc_per_node=4 -m engine.run_spectrum ...   (data-parallel Hessian-vector products)

Writes the store's hessian/ group (top-k eigenpairs with their Ritz bounds, SLQ density per run and quadrature,
per-block curvature with hessian.blocks), spectrum.json (with the convergence flags), the density, eigenvalue
and block figures and report.html (every number, the figures, the config and the provenance). The same command
run again redraws without recomputing; other settings or other weights are refused unless store.overwrite=true.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.app import stages
from engine.app.provenance import provenance_record, ranks_and_devices
from engine.config.schema import RunConfig, config_hash
from engine.core.dist import check_same, on_main, process_group
from engine.curvature.spectra import Spectrum, compute_spectrum, hessian_params, spectrum_json
from engine.directions.vectors import perturbed
from engine.figures.curvature import draw_spectrum
from engine.sources.checkpoints import state_fingerprint
from engine.sources.data import load_data
from engine.sources.structure import items_in
from engine.store.spectra import existing_spectrum, write_spectrum_store


def spectrum_settings(resolved: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """What a spectrum's numbers depend on: the weights, the data, the eval split and the hessian settings."""
    settings = {"fingerprint": fingerprint, "data": resolved["data"], "hessian": resolved["hessian"],
                "eval": {k: resolved["eval"][k] for k in ("split", "samples")}, "over": resolved["direction"]["over"]}
    if resolved.get("loss", {}).get("name", "cross_entropy") != "cross_entropy":  # older stores: no key, the default
        settings["loss"] = resolved["loss"]
    scope = {k: resolved["direction"].get(k) for k in ("include", "exclude", "frozen")}
    if any(scope.values()):
        settings["scope"] = scope
    return settings


def run_spectrum(cfg: RunConfig, resolved: dict[str, Any], log: bool = True,
                 given: stages.Given | None = None) -> tuple[Path, Spectrum]:
    """Train or load the model, compute its spectra at theta* (all ranks), and write store, JSON and figures."""
    start, started = time.perf_counter(), time.time()
    stages.preflight(cfg)
    if cfg.track is not None:
        from engine.app.trackers import check_tracker

        check_tracker(cfg.track)
    with process_group(cfg.eval.device) as env:
        say = stages.console(log, env)
        if given is None:
            data = load_data(cfg.data, cfg.model.path)
            model = stages.prepare_model(cfg, data, env, log=log and env.is_main)
            split = stages.eval_split(cfg, data)
            resolved = stages.fingerprinted(cfg, resolved, split)
        else:
            model = given.model.to(env.device).eval()
            split = stages.given_split(cfg, given.split)
        fingerprint = state_fingerprint(model)
        check_same(env, "model weights (fingerprints)", fingerprint)
        run_dir = stages.run_dir_of(cfg)
        stages.rank_log(run_dir, env)
        path = run_dir / "spectrum.zarr"
        settings = spectrum_settings(resolved, fingerprint)
        spectrum = existing_spectrum(path, settings, cfg.store.overwrite)
        if spectrum is not None:
            say(f"spectrum: already in {path}; redrawing")
        else:
            if given is None:
                loss = stages.loss_stage(cfg, model, split, env)
            else:
                loss = stages.probed(given.loss, model, split, env)
            batches = stages.hessian_stage_batches(cfg, split, env, always=True)
            d = cfg.direction
            params = hessian_params(perturbed(model, d.over, d.include, d.exclude, d.frozen).tensors)
            say(f"spectrum of {cfg.model.name} at theta* over {sum(items_in(b) for b in batches)} samples "
                f"({sum(p.numel() for p in params)} parameters, {env.world_size} rank(s))")
            spectrum = compute_spectrum(model, params, batches, cfg.hessian, env, loss,
                                        progress=cfg.eval.progress and env.is_main)
            computed = spectrum

            def write() -> None:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_spectrum_store(path, computed, settings, resolved)

            on_main(env, write)
        ranks = ranks_and_devices(env)
        if env.is_main:
            about = provenance_record(env, ranks, fingerprint, config_hash(resolved), started,
                                      time.perf_counter() - start)
            outputs(cfg, spectrum, run_dir, path, say, resolved, about)
            if cfg.track is not None:
                from engine.app.trackers import log_run

                log_run(run_dir, cfg.track)
    return path, spectrum


def outputs(cfg: RunConfig, spectrum: Spectrum, run_dir: Path, path: Path, say: stages.Say,
            resolved: dict[str, Any], about: dict[str, Any]) -> None:
    """spectrum.json, the density, eigenvalue and block figures and report.html (plot.enabled) and the console
    lines (rank 0)."""
    spectrum_json(spectrum, run_dir / "spectrum.json")
    matrix = "GGN" if spectrum.matrix == "ggn" else "Hessian"
    title = f"{cfg.model.name} on {cfg.data.name}, {matrix} at theta*"
    formats = list(cfg.plot.formats)
    if cfg.plot.enabled:
        figures = draw_spectrum(spectrum, run_dir / "figures", formats=formats, title=title)
        if cfg.plot.html:
            from engine.figures.report import write_report  # plotly: only when asked

            report = write_report(run_dir, {"spectrum": spectrum.numbers()}, resolved, about, figures,
                                  f"{title} ({run_dir.name})")
            say(f"report:  {report}")
    n = spectrum.numbers()
    say(f"lambda_max {n['lambda_max']:.6g}, lambda_min {n['lambda_min']:.6g}, trace {n['trace_hutchinson']:.6g}"
        f" +- {n['trace_stderr']:.2g} (Hutch++ {n['trace_hutchpp']:.6g}); {n['hessian_vector_products']} "
        f"{'GGN' if spectrum.matrix == 'ggn' else 'Hessian'}-vector products in {n['seconds']:.1f} s")
    flags = n["convergence"]
    if not flags["converged"]:
        names = list(flags["flagged"])
        more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
        say(f"not within hessian.tolerance={flags['tolerance']}: {', '.join(names[:4])}{more}; raise "
            f"{', '.join(flags['raise'])}")
    say(f"store:   {path}\nsummary: {run_dir / 'spectrum.json'}")

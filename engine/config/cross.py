"""Combinations of settings that cannot work together, refused in one line before any data is loaded or any model
trained (each group's own values are checked by its dataclass in schema.py)."""

from __future__ import annotations

from engine.config.schema import AUTO, RunConfig
from engine.core.errors import UserError

LINE_KINDS = ("interpolation",)  # direction kinds that are a 1D sweep
PLANE_KINDS = ("plane", "pca")  # direction kinds that span a plane
PCA_MIN_CHECKPOINTS = 3  # a trajectory of fewer epoch_*.pt files has no second principal component to speak of


def check_combination(cfg: RunConfig) -> None:
    """Refuse a config whose groups contradict each other: the direction kind against the grid's dimension, a PCA
    run that will not have a trajectory, autocast on a CPU."""
    d, e = cfg.direction, cfg.eval
    ndim = len(cfg.grid.resolution)
    if d.kind in LINE_KINDS and ndim != 1:
        raise UserError(f"direction={d.kind} is a 1D sweep: use grid=line (e.g. grid.resolution=[41] "
                        "grid.x=[-0.5,1.5] to extrapolate beyond both models)")
    if d.kind in PLANE_KINDS and ndim != 2:
        raise UserError(f"direction={d.kind} spans a plane: use grid=plane (grid.resolution=[nx,ny])")
    if d.kind == "curve" and ndim == 2 and d.bends != 1:
        raise UserError(f"direction=curve with grid=plane draws the plane through A, B and the one bend: set "
                        f"direction.bends=1 (got {d.bends}) or use grid=line")
    if d.kind == "pca" and d.trajectory is None and cfg.model.checkpoint is None and \
            cfg.train.epochs < PCA_MIN_CHECKPOINTS:
        raise UserError(f"direction=pca needs a trajectory of at least {PCA_MIN_CHECKPOINTS} checkpoints: this run "
                        f"trains {cfg.train.epochs} epoch(s); set train.epochs>={PCA_MIN_CHECKPOINTS} or give "
                        "direction.trajectory=<folder of epoch_*.pt>")
    if cfg.hessian.matrix == "ggn" and cfg.loss.name == "custom":
        raise UserError("hessian.matrix=ggn needs a loss of the model's output (cross_entropy, mse or causal_lm); "
                        "loss=custom computes its value inside its own function: use hessian.matrix=hessian")
    if d.count > 1 and (d.kind != "random" or ndim != 1):
        raise UserError(f"direction.count={d.count} draws that many random lines: use direction=random grid=line "
                        f"(now direction={d.kind}, a {ndim}D grid)")
    auto = [axis for axis in "xy"[:ndim] if getattr(cfg.grid, axis) == AUTO]
    if auto and d.kind not in ("random", "hessian", "file"):
        raise UserError(f"grid.{auto[0]}=auto bisects along normalized directions; direction={d.kind} keeps the "
                        f"checkpoints' own scale: give grid.{auto[0]}=[min,max]")
    if auto and e.recalibrate_bn:
        raise UserError(f"grid.{auto[0]}=auto bisects with the stored BatchNorm statistics; with "
                        f"eval.recalibrate_bn give grid.{auto[0]}=[min,max]")
    shard = cfg.parallel.shard
    for on, key, why in ((cfg.hessian.curvature, "hessian.curvature", "Hessian-vector products at every point"),
                         (e.recalibrate_bn, "eval.recalibrate_bn", "BatchNorm statistics recomputed at every point"),
                         (e.compile, "eval.compile", "a compiled model")):
        if shard > 1 and on:
            raise UserError(f"parallel.shard={shard} does not support {key} ({why} on a sharded model); turn it "
                            "off or set parallel.shard=1")
    for on, key in ((shard > 1, f"parallel.shard={shard}"), (cfg.hessian.curvature, "hessian.curvature"),
                    (e.recalibrate_bn, "eval.recalibrate_bn"), (e.compile, "eval.compile"),
                    ((e.points_per_pass or 1) > 1, f"eval.points_per_pass={e.points_per_pass}")):
        if e.perturb == "on_access" and on:
            raise UserError(f"eval.perturb=on_access does not go with {key} (it evaluates one point at a time on "
                            "the model as it is): set eval.perturb=in_place or drop the other setting")
    if cfg.parallel.load == "sharded":
        reason = "it needs parallel.shard > 1" if shard == 1 else whole_load_reason(cfg)
        if reason:
            raise UserError(f"parallel.load=sharded cannot read each rank's rows here: {reason}; set "
                            "parallel.load=auto (or whole)")
    if e.precision != "fp32" and e.device == "cpu":
        raise UserError(f"eval.precision={e.precision} is autocast on CUDA devices; use eval.precision=fp32 with "
                        "eval.device=cpu")


ROW_KINDS = ("random", "file", "interpolation", "plane", "pca")  # direction kinds a sharded load makes row by row


def whole_load_reason(cfg: RunConfig) -> str | None:
    """Why a sharded run must load the whole model on every rank before sharding it, or None when each rank can read
    only its rows of the checkpoint (parallel.load=auto then does; parallel.load=sharded is refused otherwise)."""
    m, d = cfg.model, cfg.direction
    if not m.checkpoint and m.name != "hf":
        return "the model is trained first (give model.checkpoint=<file>)"
    if not m.checkpoint and m.kwargs:
        return "model.kwargs are from_pretrained arguments"
    if d.align != "none":
        return f"direction.align={d.align} matches whole weight matrices"
    if d.count > 1:
        return f"direction.count={d.count} lines are drawn whole, one seed each"
    if d.kind not in ROW_KINDS:
        return f"direction={d.kind} is made from whole tensors (row by row: {', '.join(ROW_KINDS)})"
    if cfg.hessian.spectrum:
        return "hessian.spectrum runs on the whole model"
    return None

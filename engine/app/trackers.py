"""A finished run sent to an experiment tracker: `log_run(run_dir, "tensorboard" | "mlflow" | "wandb")` or to a
tracker handle a training run already holds (a Lightning logger, a SummaryWriter, a W&B run).

What each receives: every finite number of summary.json (or spectrum.json) as a scalar named by its path
(`landscape/center/loss`, `landscape/basin/x/width`, `landscape/spectrum/trace_stderr`, ...), the PNG figures as
images, report.html and figures/landscape.html as files (a W&B HTML panel; MLflow's artifact view shows them), and
the store's path and config hash as tags (TensorBoard: a text entry).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.core.imports import require

TRACKERS = ("tensorboard", "mlflow", "wandb")
PREFIX = "landscape"
PAGES = ("report.html", "figures/landscape.html")
UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")  # MLflow's metric-name alphabet, the narrowest of the three


def summary_scalars(numbers: dict[str, Any], prefix: str = PREFIX) -> dict[str, float]:
    """Every finite number of a summary (nested dicts and lists walked; booleans and text left out) by its path."""
    out: dict[str, float] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}/{UNSAFE.sub('_', str(k))}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{key}/{i}")
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)

    walk(numbers, prefix)
    return out


def run_numbers(run_dir: Path) -> dict[str, Any]:
    """summary.json of a landscape run, or spectrum.json of a landscape-spectrum run."""
    for name in ("summary.json", "spectrum.json"):
        if (run_dir / name).is_file():
            return dict(json.loads((run_dir / name).read_text()))
    raise UserError(f"{run_dir} holds no summary.json or spectrum.json; give the folder of a finished run")


def run_tags(run_dir: Path) -> dict[str, str]:
    """The store's path and config hash (from provenance.json), the tags a tracker's run is found by."""
    tags = {"landscape.run_dir": str(run_dir.resolve())}
    provenance = run_dir / "provenance.json"
    if provenance.is_file():
        tags["landscape.config_hash"] = str(json.loads(provenance.read_text()).get("config_hash"))
    store = next((p for p in sorted(run_dir.glob("*.zarr"))), None)
    if store is not None:
        tags["landscape.store"] = str(store.resolve())
    return tags


def check_tracker(name: str) -> None:
    """Refuse a tracker whose package is missing before a run starts (one line naming the extra)."""
    if name not in TRACKERS:
        raise UserError(f"track={name!r} is not one of {', '.join(TRACKERS)}")
    require({"mlflow": "mlflow.tracking"}.get(name, name), f"track={name}")


def log_run(run_dir: str | Path, tracker: Any, step: int = 0) -> None:
    """Send a finished run's numbers, figures, pages and tags to a tracker: a name (a new run of it: TensorBoard
    under <run_dir>/tensorboard, MLflow at MLFLOW_TRACKING_URI, W&B in WANDB_PROJECT or `landscape`) or a handle."""
    folder = Path(run_dir)
    scalars = summary_scalars(run_numbers(folder))
    figures = sorted((folder / "figures").glob("*.png"))
    pages = [folder / p for p in PAGES if (folder / p).is_file()]
    sink, owned = _sink(tracker, folder)
    try:
        sink.send(scalars, figures, pages, run_tags(folder), step)
    finally:
        if owned:
            sink.close()


def _sink(tracker: Any, run_dir: Path) -> tuple[Any, bool]:
    """The sink writing to `tracker`, and whether it was opened here (and is closed after)."""
    if isinstance(tracker, str):
        if tracker not in TRACKERS:
            raise UserError(f"track={tracker!r} is not one of {', '.join(TRACKERS)}")
        return {"tensorboard": _TensorBoard.open, "mlflow": _MLflow.open, "wandb": _WandB.open}[tracker](run_dir), True
    kind = type(tracker).__name__
    if kind == "TensorBoardLogger":  # Lightning's loggers hold the tracker's own handle
        return _TensorBoard(tracker.experiment), False
    if kind in ("MLFlowLogger", "MlflowRun"):  # MlflowRun: engine.integrations.hf's handle on the Trainer's run
        return _MLflow(tracker.experiment if kind == "MLFlowLogger" else tracker.client, tracker.run_id), False
    if kind == "WandbLogger":
        return _WandB(tracker.experiment), False
    if hasattr(tracker, "add_scalar") and hasattr(tracker, "get_logdir"):
        return _TensorBoard(tracker), False
    if hasattr(tracker, "log") and hasattr(tracker, "summary") and hasattr(tracker, "project"):
        return _WandB(tracker), False
    raise UserError(f"cannot log to a {kind}: give tensorboard, mlflow or wandb, a Lightning TensorBoardLogger, "
                    "MLFlowLogger or WandbLogger, a SummaryWriter or a wandb run")


class _TensorBoard:
    """Scalars and images in a SummaryWriter's event files; the pages copied beside them, listed in a text entry."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path) -> _TensorBoard:
        require("tensorboard", "track=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        return cls(SummaryWriter(log_dir=str(run_dir / "tensorboard")))

    def send(self, scalars: dict[str, float], figures: list[Path], pages: list[Path], tags: dict[str, str],
             step: int) -> None:
        from matplotlib.image import imread

        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        for png in figures:
            pixels = imread(png)[..., :3]  # float RGB(A) in [0, 1]
            self.writer.add_image(f"{PREFIX}/{png.stem}", pixels, step, dataformats="HWC")
        copied = Path(self.writer.get_logdir()) / PREFIX
        copied.mkdir(parents=True, exist_ok=True)
        for page in pages:
            shutil.copy2(page, copied / page.name)
        lines = [f"- {k}: `{v}`" for k, v in tags.items()] + [f"- {p.name}: `{copied / p.name}`" for p in pages]
        self.writer.add_text(f"{PREFIX}/run", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    """Metrics, tags and artifacts of one MLflow run through its client (figures/ and the pages as artifacts)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, run_dir: Path) -> _MLflow:
        tracking = require("mlflow.tracking", "track=mlflow")
        # MLFLOW_TRACKING_URI before a URI some library set in this process earlier (a trainer's own run)
        client = tracking.MlflowClient(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PREFIX)
        found = client.get_experiment_by_name(name)
        experiment = found.experiment_id if found is not None else client.create_experiment(name)
        return cls(client, client.create_run(experiment, run_name=run_dir.name).info.run_id)

    def send(self, scalars: dict[str, float], figures: list[Path], pages: list[Path], tags: dict[str, str],
             step: int) -> None:
        from mlflow.entities import Metric, RunTag

        stamp = int(1000 * time.time())
        metrics = [Metric(k, v, stamp, step) for k, v in scalars.items()]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for png in figures:
            self.client.log_artifact(self.run_id, str(png), f"{PREFIX}/figures")
        for page in pages:
            self.client.log_artifact(self.run_id, str(page), PREFIX)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _WandB:
    """History and summary of one W&B run: scalars, figures as images, the pages as HTML panels and saved files."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @classmethod
    def open(cls, run_dir: Path) -> _WandB:
        wandb = require("wandb", "track=wandb")
        return cls(wandb.init(project=os.environ.get("WANDB_PROJECT", PREFIX), name=run_dir.name,
                              dir=os.environ.get("WANDB_DIR"), reinit="create_new"))

    def send(self, scalars: dict[str, float], figures: list[Path], pages: list[Path], tags: dict[str, str],
             step: int) -> None:
        import wandb

        media: dict[str, Any] = {f"{PREFIX}/{png.stem}": wandb.Image(str(png)) for png in figures}
        for page in pages:
            media[f"{PREFIX}/{page.stem}"] = wandb.Html(page.read_text(), inject=False)
            self.run.save(str(page), base_path=str(page.parent), policy="now")
        self.run.log({**scalars, **media})
        self.run.summary.update(scalars)
        self.run.config.update(tags, allow_val_change=True)
        self.run.tags = (*self.run.tags, f"config_hash:{tags.get('landscape.config_hash')}")

    def close(self) -> None:
        self.run.finish()

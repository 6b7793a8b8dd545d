"""A Hugging Face `transformers.Trainer` callback that records the training trajectory and sweeps its loss landscape
when training ends, on the Trainer's eval set (its collator included) with the model's own loss.

    from engine.integrations.hf import LandscapeCallback
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val, data_collator=collator,
                      callbacks=[LandscapeCallback(**{"grid.resolution": (21, 21)})])
    trainer.train()      # <output_dir>/landscape/trajectory/epoch_<step>.pt, then the PCA plane

Needs the [hf] extra (`pip install 'landscape-engine[hf]'`); the run goes to the trackers of `report_to`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from engine.core.errors import UserError
from engine.core.imports import require
from engine.integrations.callbacks import RecorderViews, TrajectoryRecorder

TrainerCallback: Any = require("transformers", "engine.integrations.hf").TrainerCallback


def model_loss(model: nn.Module) -> str:
    """The engine's name for the model's own loss: causal_lm for a causal language model, mse for a regression
    head (one label, or problem_type regression), cross_entropy for a classification head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return "causal_lm"
    config = getattr(model, "config", None)
    if getattr(config, "problem_type", None) == "regression" or getattr(config, "num_labels", 2) == 1:
        return "mse"
    return "cross_entropy"


class LandscapeCallback(RecorderViews, TrainerCallback):
    """Saves the weights every `every_n_epochs` epochs and/or `every_n_steps` steps (rank 0, float32, with epoch
    and step) under `directory` (default <output_dir>/landscape/trajectory); when training ends, sweeps the
    trajectory's PCA plane (or the direction kind in `settings`) on `data` ("eval": the Trainer's eval loader, or any
    eval set engine.landscape takes) with the model's own loss, and logs the run to the TensorBoard, MLflow and W&B
    runs of `report_to`. The result is `callback.result` (an xarray.Dataset) in `callback.run_dir`."""

    def __init__(self, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 directory: str | Path | None = None, sweep_at_end: bool = True, data: Any = "eval",
                 **settings: Any) -> None:
        self.recorder = TrajectoryRecorder(every_n_epochs, every_n_steps, directory, sweep_at_end, data, settings)
        self.trackers: list[Any] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.recorder.place(args.output_dir)
        reports = args.report_to if isinstance(args.report_to, list | tuple) else [args.report_to]
        self.trackers = []
        if "mlflow" in reports:  # the run the Trainer's MLflowCallback started (it ends it before this one's end)
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                self.trackers.append(("mlflow", (active.info.run_id, mlflow.get_tracking_uri())))
        if "wandb" in reports:
            import wandb

            if wandb.run is not None:
                self.trackers.append(wandb.run)
        if "tensorboard" in reports:
            self.trackers.append(("tensorboard", args.output_dir))

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            self.recorder.step_ended(model, round(state.epoch or 0), state.global_step)

    def on_epoch_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     **kwargs: Any) -> None:
        if model is not None:
            self.recorder.epoch_ended(model, round(state.epoch or 0), state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     eval_dataloader: Any = None, **kwargs: Any) -> None:
        if model is None:
            raise UserError("LandscapeCallback: the Trainer passed no model to on_train_end")
        data = self.recorder.data
        if data == "eval":
            if eval_dataloader is None:
                raise UserError("LandscapeCallback(data='eval'): the Trainer has not evaluated (no eval loader); set "
                                "eval_strategy='epoch' with an eval_dataset, or pass the eval set as data=")
            data = eval_dataloader
        was_training, handles = model.training, [_handle(t) for t in self.trackers]
        try:
            self.recorder.finish(model, data, model_loss(model), handles, state.global_step, round(state.epoch or 0),
                                 _barrier)
        finally:
            for handle in handles:
                if hasattr(handle, "get_logdir"):  # the SummaryWriter opened here on the Trainer's folder
                    handle.close()
        model.train(was_training)


def _barrier() -> None:
    """Wait for every rank of a distributed Trainer (rank 0's last checkpoint written before any rank reads)."""
    if dist.is_initialized():
        dist.barrier()


def _handle(tracker: Any) -> Any:
    """A tracker handle log_run takes: the W&B run itself, a client and run id for MLflow, the Trainer's TensorBoard
    folder (TENSORBOARD_LOGGING_DIR, else the newest <output_dir>/runs/<time>_<host>/) as a SummaryWriter."""
    if not isinstance(tracker, tuple):
        return tracker
    kind, where = tracker
    if kind == "mlflow":
        from mlflow.tracking import MlflowClient

        run_id, uri = where
        return MlflowRun(MlflowClient(tracking_uri=uri), run_id)
    from torch.utils.tensorboard import SummaryWriter

    folder = os.getenv("TENSORBOARD_LOGGING_DIR")
    if folder is None:
        found = sorted((p for p in Path(where, "runs").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
        folder = str(found[-1]) if found else str(Path(where, "runs", "landscape"))
    return SummaryWriter(log_dir=folder)


class MlflowRun:
    """An MLflow run by its client and id (what log_run needs of an existing run)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

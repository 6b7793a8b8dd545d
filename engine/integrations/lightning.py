"""A Lightning callback that records the training trajectory and sweeps its loss landscape when training ends.

    from engine.integrations.lightning import LandscapeCallback
    trainer = lightning.Trainer(max_epochs=10, callbacks=[LandscapeCallback(**{"grid.resolution": (21, 21)})])
    trainer.fit(module, datamodule)      # <default_root_dir>/landscape/trajectory/epoch_<step>.pt, then the PCA plane

Needs the [lightning] extra (`pip install 'landscape-engine[lightning]'`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from engine.core.errors import UserError
from engine.core.imports import require
from engine.integrations.callbacks import RecorderViews, TrajectoryRecorder, criterion_of

Callback: Any = require("lightning.pytorch", "engine.integrations.lightning").Callback

LOGGERS = ("TensorBoardLogger", "MLFlowLogger", "WandbLogger")  # the trainer's loggers the run is sent to
SPLITS = ("val", "train", "test")


class LandscapeCallback(RecorderViews, Callback):
    """Saves the weights every `every_n_epochs` epochs and/or `every_n_steps` steps (rank 0, float32, with epoch
    and step) under `directory`; when training ends, sweeps the trajectory's PCA plane (or the direction kind in
    `settings`: the engine's dotted keys) on the `data` split ("val", "train", "test", or any eval set
    engine.landscape takes) with the module's own loss, and logs the run to the trainer's TensorBoard, MLflow and
    W&B loggers. The result is `callback.result` (an xarray.Dataset) in `callback.run_dir`."""

    def __init__(self, every_n_epochs: int | None = 1, every_n_steps: int | None = None,
                 directory: str | Path | None = None, sweep_at_end: bool = True, data: Any = "val",
                 **settings: Any) -> None:
        super().__init__()
        if isinstance(data, str) and data not in SPLITS:
            raise UserError(f"LandscapeCallback(data={data!r}): give one of {', '.join(SPLITS)} or an eval set")
        self.recorder = TrajectoryRecorder(every_n_epochs, every_n_steps, directory, sweep_at_end, data, settings)

    def setup(self, trainer: Any, pl_module: nn.Module, stage: str) -> None:
        self.recorder.place(trainer.default_root_dir)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.recorder.step_ended(pl_module, trainer.current_epoch + 1, trainer.global_step)

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self.recorder.epoch_ended(pl_module, trainer.current_epoch + 1, trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: nn.Module) -> None:
        loss = criterion_of(pl_module) or "cross_entropy"
        trackers = [logger for logger in trainer.loggers if type(logger).__name__ in LOGGERS]
        was_training = pl_module.training
        self.recorder.finish(pl_module, self._data(trainer), loss, trackers, trainer.global_step,
                             trainer.current_epoch, trainer.strategy.barrier)
        pl_module.train(was_training)

    def _data(self, trainer: Any) -> Any:
        """The eval set: the trainer's loaders of the named split (the first of several), else the datamodule's."""
        data = self.recorder.data
        if not isinstance(data, str):
            return data
        loaders = {"val": trainer.val_dataloaders, "train": trainer.train_dataloader,
                   "test": trainer.test_dataloaders}[data]
        if loaders is None and trainer.datamodule is not None:
            loaders = getattr(trainer.datamodule, f"{data}_dataloader")()
        if isinstance(loaders, list | tuple) and loaders:
            loaders = loaders[0]
        if isinstance(loaders, dict) and loaders:
            loaders = next(iter(loaders.values()))
        if loaders is None:
            raise UserError(f"LandscapeCallback(data={data!r}): the trainer has no {data} data; give fit() "
                            f"{data}_dataloaders, or pass the eval set as data=")
        return loaders

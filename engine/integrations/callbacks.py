"""What the Lightning and Hugging Face callbacks share, free of either framework: when to save a checkpoint of the
trajectory, the model's own loss as the engine's, and the sweep and tracker logging at the end of training."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.app.trackers import log_run
from engine.core.errors import UserError
from engine.integrations.trajectory import Trajectory, is_main_process

CRITERION_ATTRIBUTES = ("criterion", "loss_fn", "loss_func", "loss")  # where a module keeps its torch loss


class TrajectoryRecorder:
    """Saves the weights every n epochs and/or every n optimizer steps (and the final weights), then sweeps the
    trajectory's PCA plane (or the direction kind in `settings`) with engine.landscape and logs it to trackers."""

    def __init__(self, every_n_epochs: int | None, every_n_steps: int | None, directory: str | Path | None,
                 sweep_at_end: bool, data: Any, settings: dict[str, Any]) -> None:
        for key, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and value < 1:
                raise UserError(f"LandscapeCallback({key}={value}): give a count >= 1, or None to save by the other")
        if every_n_epochs is None and every_n_steps is None:
            raise UserError("LandscapeCallback(every_n_epochs=None, every_n_steps=None) saves nothing; set one")
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.directory = Path(directory) if directory is not None else None
        self.sweep_at_end, self.data, self.settings = sweep_at_end, data, dict(settings)
        self.last_step: int | None = None
        self.result: Any = None  # the sweep's xarray.Dataset, once training ended
        self.run_dir: Path | None = None

    def place(self, root: str | Path) -> None:
        """Put the trajectory (and the sweep's runs, unless out_dir is set) under root/landscape when no directory
        was given."""
        if self.directory is None:
            self.directory = Path(root) / "landscape" / "trajectory"
        self.settings.setdefault("out_dir", str(self.directory.parent / "runs"))

    @property
    def trajectory(self) -> Trajectory:
        if self.directory is None:
            raise UserError("LandscapeCallback has no directory yet: training has not started")
        return Trajectory(self.directory)

    def epoch_ended(self, model: nn.Module, epoch: int, step: int) -> None:
        """Save after epoch `epoch` (counted from 1) when it is a multiple of every_n_epochs."""
        if self.every_n_epochs is not None and epoch % self.every_n_epochs == 0:
            self.save(model, step, epoch)

    def step_ended(self, model: nn.Module, epoch: int, step: int) -> None:
        """Save after optimizer step `step` when it is a multiple of every_n_steps."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            self.save(model, step, epoch)

    def save(self, model: nn.Module, step: int, epoch: int) -> None:
        if step != self.last_step:
            self.trajectory.save(model, step, epoch)
            self.last_step = step

    def finish(self, model: nn.Module, data: Any, loss: Any, trackers: Iterable[Any], step: int, epoch: int,
               barrier: Callable[[], None]) -> None:
        """Save the final weights, wait for rank 0's files, sweep on every rank (a distributed job sweeps as one),
        and log the run to the trackers on rank 0."""
        self.save(model, step, epoch)
        if not self.sweep_at_end:
            return
        barrier()
        settings = {k: v for k, v in self.settings.items() if k != "loss"}
        self.result = self.trajectory.sweep(model, data, self.settings.get("loss", loss), **settings)
        self.run_dir = Path(self.result.attrs["run_dir"])
        if is_main_process():
            for tracker in trackers:
                log_run(self.run_dir, tracker, step=step)


class RecorderViews:
    """What a landscape callback shows of its TrajectoryRecorder: the sweep's result, its run folder, the weights'."""

    recorder: TrajectoryRecorder

    @property
    def result(self) -> Any:
        return self.recorder.result

    @property
    def run_dir(self) -> Path | None:
        return self.recorder.run_dir

    @property
    def directory(self) -> Path | None:
        return self.recorder.directory


def criterion_of(module: nn.Module) -> Any:
    """The torch loss a module keeps as criterion / loss_fn / loss_func / loss, as the engine's loss (a plain
    CrossEntropyLoss or MSELoss as the built-in one), or None when it keeps none."""
    for name in CRITERION_ATTRIBUTES:
        found = getattr(module, name, None)
        if isinstance(found, nn.modules.loss._Loss):
            if isinstance(found, nn.CrossEntropyLoss | nn.MSELoss) and _plain(found):
                return found
            return summed_criterion(found)
    return None


def _plain(criterion: nn.Module) -> bool:
    return getattr(criterion, "reduction", "mean") == "mean" and getattr(criterion, "weight", None) is None and \
        not getattr(criterion, "label_smoothing", 0.0) and getattr(criterion, "ignore_index", -100) == -100


def summed_criterion(criterion: nn.Module) -> Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]:
    """A torch loss (weights, smoothing, ignore_index and all) as fn(model, (x, y)) -> (summed loss, items): the
    criterion with reduction='sum', over the targets it counts."""
    summed = copy.copy(criterion)
    summed.reduction = "sum"  # type: ignore[assignment]
    ignore = getattr(criterion, "ignore_index", None)

    def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        out = summed(model(x), y)
        if getattr(criterion, "weight", None) is not None and y.dtype == torch.long:
            count = criterion.weight[y].sum()  # type: ignore[index]  # a weighted mean's denominator
        elif ignore is not None and y.dtype == torch.long:
            count = (y != ignore).sum()
        else:
            count = torch.tensor(y.numel() if isinstance(criterion, nn.MSELoss | nn.L1Loss) else len(y))
        return out, count

    loss.__qualname__ = f"criterion.{type(criterion).__name__}"
    return loss

"""Training trajectories written from any training code: the epoch_NNN.pt checkpoints `direction=pca
direction.trajectory=<folder>` reads, and the PCA sweep of them at the end of training.

    trajectory = Trajectory("runs/my-trajectory")
    for epoch in range(epochs):
        train_one_epoch(model)
        trajectory.save(model, step)           # rank 0 only under torch.distributed; float32 weights
    trajectory.sweep(model, val_loader)         # engine.landscape on the PCA plane of the saved weights
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from engine.core.errors import UserError

NAME_DIGITS = 8  # epoch_00000012.pt: the number is the optimizer step (the PCA orders the files by it)


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job (or of RANK in the environment before it is joined); a lone process too."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers (their state dict keys are
    prefixed with module. / _orig_mod.)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class Trajectory:
    """A folder of a training run's checkpoints, one `epoch_<step>.pt` per save: the model's state dict in float32
    (floating tensors; integer buffers as they are) with the epoch and step."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def save(self, model: nn.Module, step: int, epoch: int | None = None) -> Path | None:
        """Write the model's weights at this optimizer step (rank 0 only: other ranks return None)."""
        if step < 0:
            raise UserError(f"Trajectory.save(step={step}): the step must be >= 0 (it orders the checkpoints)")
        if not is_main_process():
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        state = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
                 for k, v in unwrapped(model).state_dict().items()}
        path = self.directory / f"epoch_{step:0{NAME_DIGITS}d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save({"state_dict": state, "epoch": epoch, "step": step}, tmp)
        tmp.replace(path)  # a reader never meets a half-written checkpoint
        return path

    def checkpoints(self) -> list[Path]:
        """The saved checkpoints, in step order."""
        from engine.directions.trajectory import list_checkpoints

        return list_checkpoints(self.directory) if self.directory.is_dir() else []

    def sweep(self, model: nn.Module, data: Any, loss: Any = "cross_entropy", **settings: Any) -> Any:
        """engine.landscape(model, data, loss) on the PCA plane of this trajectory around the model's weights (or on
        the direction kind `settings` names); returns its xarray.Dataset."""
        from engine.app.api import landscape

        return landscape(unwrapped(model), data, loss, **sweep_settings(self.directory, settings))


def sweep_settings(directory: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The engine settings of a trajectory's sweep: the PCA plane of `directory` unless `settings` name another
    direction kind; anything given wins."""
    if settings.get("direction", "pca") != "pca":
        return dict(settings)
    return {"direction": "pca", "direction.trajectory": str(directory), **settings}

"""Data, models and a loss of a user's own, as `data._target_`, `model._target_` and `loss._target_` name them:
a regression data set of (x, y) pairs, the same as dict items, a model that takes the dict's features, and a
custom loss with an extra metric. Imported by name from runs (tests/ is on the path)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

FEATURES, OUTPUTS = 6, 2


def regression_tensors(size: int = 160, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs and smooth targets of a fixed random teacher, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, FEATURES, generator=g)
    teacher = torch.randn(FEATURES, OUTPUTS, generator=g)
    return x, torch.tanh(x @ teacher) + 0.05 * torch.randn(size, OUTPUTS, generator=g)


class Regression(Dataset):
    """(x [6], y [2]) float pairs: a regression task for loss=mse."""

    def __init__(self, size: int = 160, seed: int = 0) -> None:
        self.x, self.y = regression_tensors(size, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class DictRegression(Regression):
    """The same samples as dicts {"features", "target"}: batches a built-in loss cannot unpack."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"features": self.x[i], "target": self.y[i]}


class FeatureNet(nn.Module):
    """A small tanh network on the dict's features (smooth, so its Hessian is well defined everywhere)."""

    def __init__(self, hidden: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, OUTPUTS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def squared_error(model: nn.Module, batch: dict[str, torch.Tensor],
                  scale: float = 1.0) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """scale * the summed squared error over items, the item count, and the summed absolute error as a metric."""
    err = model(batch["features"]) - batch["target"]
    return scale * err.pow(2).sum(), len(err), {"abs_error": err.abs().sum(1).sum()}


class FileRegression(Dataset):
    """(x, y) float pairs read from an .npz file with arrays x and y: a data set whose files can change under the
    same config (`data._target_=loss_fixtures.FileRegression +data.kwargs.path=...`)."""

    def __init__(self, path: str) -> None:
        import numpy as np

        with np.load(path) as arrays:
            self.x, self.y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

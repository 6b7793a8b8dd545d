"""BatchNorm statistics recomputed at a point of weight space, on training data.

Moving the weights changes the activations' statistics, so the running statistics stored at theta* no longer
fit. Recalibration (as in Garipov et al. 2018's curve-finding and Goodfellow-style interpolations) resets them
and averages them afresh over training batches, in train mode, without gradients.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.sources.losses import CROSS_ENTROPY, Loss
from engine.sources.structure import Batch

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Every running-statistics tensor recalibration overwrites (to restore them afterwards)."""
    return [t for m in batchnorm_layers(model) for t in (m.running_mean, m.running_var, m.num_batches_tracked)
            if t is not None]


class BatchNormRecalibrator:
    """Recompute every BN layer's running statistics as the plain average over the given training batches."""

    def __init__(self, model: nn.Module, batches: list[Batch], loss: Loss = CROSS_ENTROPY) -> None:
        self.model, self.batches, self.loss = model, batches, loss
        self.layers = batchnorm_layers(model)

    @torch.no_grad()
    def __call__(self) -> None:
        momenta = [m.momentum for m in self.layers]
        was_training = self.model.training
        try:
            for m in self.layers:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the batches
            self.model.train()
            for batch in self.batches:
                self.loss.forward(self.model, batch)
        finally:
            for m, momentum in zip(self.layers, momenta):
                m.momentum = momentum
            self.model.train(was_training)

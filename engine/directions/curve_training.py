"""Training the bends of a curve between two minima (Garipov et al. 2018): minimize the expected training loss
E_{t ~ U(0,1)} L(phi(t)) by SGD on the bends, one t per step, A and B fixed; the model is called functionally at
phi(t), in train mode (BatchNorm on batch statistics, as the paper trains), and its own tensors are left as they were.

The bends are saved to <run dir>/curve/bends.pt with the settings, A's fingerprint and B's hash they were trained
from; a run with the same ones reuses them (a resumed or repeated run trains nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from engine.config.schema import DirectionConfig
from engine.core.dist import tensors_hash
from engine.core.progress import progress_bar
from engine.directions.curves import curve_weights
from engine.sources.checkpoints import State, state_fingerprint
from engine.sources.losses import Loss
from engine.sources.splits import AnySplit, held
from engine.sources.structure import take, to_device

MOMENTUM = 0.9  # of the bends' SGD (Garipov et al. train curves with momentum 0.9 too)


def curve_settings(d: DirectionConfig, model: nn.Module, end: State, names: list[str]) -> dict[str, Any]:
    """What trained bends depend on: the curve's settings, the seed, A's fingerprint, B's hash and the tensors."""
    return {"curve": d.curve, "bends": d.bends, "epochs": d.curve_epochs, "lr": d.curve_lr,
            "batch_size": d.curve_batch_size, "seed": d.seed, "A": state_fingerprint(model),
            "B": tensors_hash([end[n] for n in names]), "names": names}


def saved_bends(path: Path, settings: dict[str, Any]) -> list[State] | None:
    """The bends in path if they were trained with these settings, else None."""
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return list(blob["bends"]) if blob.get("settings") == settings else None


def train_bends(model: nn.Module, names: list[str], theta: list[torch.Tensor], end: State, train: AnySplit,
                loss: Loss, d: DirectionConfig, progress: bool = False) -> list[State]:
    """The d.bends bends of a d.curve curve from theta (A) to end (B), each started on the line at t = k / (n + 1),
    trained d.curve_epochs epochs over the train split (seeded by direction.seed); returned on the CPU."""
    device = theta[0].device
    a = [t.detach() for t in theta]
    b = [end[n].to(t.device, t.dtype) for n, t in zip(names, a)]
    n = d.bends
    bends = [[(x + (k / (n + 1)) * (y - x)).clone().requires_grad_(True) for x, y in zip(a, b)]
             for k in range(1, n + 1)]
    opt = torch.optim.SGD([w for bend in bends for w in bend], lr=d.curve_lr, momentum=MOMENTUM)
    samples = held(train)
    everything = to_device(samples.batch(0, len(samples)), device)
    steps_per_epoch = math.ceil(len(samples) / d.curve_batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=d.curve_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(d.seed)
    buffers = {k: v.clone() for k, v in model.named_buffers()}  # train mode updates BatchNorm's running statistics
    was_training = model.training
    model.train()
    bar = progress_bar(d.curve_epochs * steps_per_epoch, "curve", "step", progress)
    try:
        with bar:
            for _ in range(d.curve_epochs):
                perm = torch.randperm(len(samples), generator=gen).to(device)
                for i in range(0, len(perm), d.curve_batch_size):
                    t = float(torch.rand((), generator=gen, dtype=torch.float64))
                    c = curve_weights(d.curve, n, np.array([t]))[0]
                    points = [*bends, b]
                    params = {name: a[j] + sum(float(c[k]) * (points[k][j] - a[j]) for k in range(n + 1))
                              for j, name in enumerate(names)}
                    step = loss.train_loss(at(model, params), take(everything, perm[i: i + d.curve_batch_size]))
                    opt.zero_grad(set_to_none=True)
                    step.backward()
                    opt.step()
                    sched.step()
                    bar.update(1)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    return [{name: w.detach().cpu() for name, w in zip(names, bend)} for bend in bends]


def at(model: nn.Module, params: dict[str, torch.Tensor]) -> Callable[..., Any]:
    """The model called with params in place of its own tensors (the curve's point, differentiable in the bends)."""
    return lambda *args, **kwargs: functional_call(model, params, args, kwargs)


def bends_for(path: Path, model: nn.Module, names: list[str], theta: list[torch.Tensor], end: State,
              train: AnySplit, loss: Loss, d: DirectionConfig, progress: bool = False) -> list[State]:
    """The curve's bends: those saved in path when trained with the same settings from the same A and B, else
    trained now and saved there (the caller runs this on rank 0; the others read path after a barrier)."""
    settings = curve_settings(d, model, end, names)
    found = saved_bends(path, settings)
    if found is not None:
        return found
    bends = train_bends(model, names, theta, end, train, loss, d, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"bends": bends, "settings": settings}, tmp)
    tmp.replace(path)
    return bends

"""Training stage: SGD on the train split, a checkpoint after every epoch (the trajectory), final.pt last."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from engine.config.schema import TrainConfig
from engine.core.errors import UserError
from engine.sources.batches import device_batches
from engine.sources.checkpoints import load_checkpoint
from engine.sources.losses import CROSS_ENTROPY, Loss, evaluate
from engine.sources.splits import DataBundle, held
from engine.sources.structure import take, to_device


def train_model(
    model: nn.Module, data: DataBundle, cfg: TrainConfig, ckpt_dir: Path, device: torch.device, log: bool = True,
    loss: Loss = CROSS_ENTROPY,
) -> Path:
    """Train model in place and save ckpt_dir/epoch_NNN.pt each epoch and final.pt; reuse a finished run.

    An existing final.pt trained with the same TrainConfig is loaded instead of training again; one made
    with another config is refused rather than overwritten.
    """
    final = ckpt_dir / "final.pt"
    wanted = dataclasses.asdict(cfg)
    if final.exists():
        blob = load_checkpoint(model, final)
        if blob.get("train_config") != wanted:
            raise UserError(
                f"{final} was trained with train={blob.get('train_config')}, not {wanted}; "
                "pick another name= for this run or delete that folder"
            )
        if log:
            print(f"reusing trained weights {final}")
        return final
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    model.to(device).train()
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    train = held(data.train)
    everything = to_device(train.batch(0, len(train)), device)
    test_batches = device_batches(held(data.test), 512, device)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(train), generator=gen).to(device)
        for i in range(0, len(perm), cfg.batch_size):
            step_loss = loss.train_loss(model, take(everything, perm[i : i + cfg.batch_size]))
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            opt.step()
        sched.step()
        model.eval()
        metrics = evaluate(model, test_batches, loss=loss)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        blob = {"state_dict": state, "epoch": epoch, "train_config": wanted}
        blob.update({f"test_{k}": v for k, v in metrics.items()})
        torch.save(blob, ckpt_dir / f"epoch_{epoch:03d}.pt")
        if log:
            print(f"epoch {epoch}/{cfg.epochs}: test {', '.join(f'{k} {v:.4f}' for k, v in metrics.items())}")
    tmp = final.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(final)
    return final

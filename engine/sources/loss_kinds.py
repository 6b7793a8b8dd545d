"""The losses besides cross-entropy: mse (regression), causal_lm (next-token prediction) and custom (a function the
config names). Each sums over its items in float64, with the squares of the per-item values for the standard errors,
and reports means once over all batches (engine/sources/losses.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from engine.config.schema import LossConfig
from engine.core.errors import UserError
from engine.core.grad_modes import reading
from engine.core.imports import import_object
from engine.sources.losses import (
    CROSS_ENTROPY,
    SQUARES,
    Loss,
    Model,
    Sums,
    describe,
    inputs_and_target,
    is_stderr,
    output_tensor,
    squares,
    stderr_name,
    wide,
)
from engine.sources.structure import Batch

IGNORE = -100  # label of a token that is not predicted (padding, a prompt): as in transformers and F.cross_entropy


class MeanSquaredError(Loss):
    """Mean over items of each item's mean squared error (so the mean over a batch equals nn.MSELoss's).

    An item is a sample (its mean squared error over its outputs): the standard error is over samples."""

    name = "mse"
    metrics = ("loss", "loss_stderr")

    def sums(self, out: Any, batch: Batch) -> Sums:
        """Summed per-item mean squared error in float64, its per-item squares, and the item count."""
        pred = output_tensor(out)
        target = inputs_and_target(batch, self.name)[2]
        if target.numel() != pred.numel():
            raise UserError(f"loss=mse: the model predicts {tuple(pred.shape)} values per batch but the targets are "
                            f"{tuple(target.shape)}; give targets of the prediction's shape")
        err = (pred.float() - target.reshape(pred.shape).float()).pow(2).reshape(len(pred), -1).mean(1)
        return {"loss": err.sum(dtype=torch.float64), "count": torch.tensor(len(pred), device=pred.device),
                "sumsq/loss": squares(err)}


class CausalLM(Loss):
    """Next-token cross-entropy over every predicted token: token t's logits predict token t+1; padding (attention
    mask 0) and -100 labels are not counted. Perplexity is exp of the mean loss; accuracy is per token.

    An item is a predicted token: the standard errors of loss and accuracy treat tokens as independent, which the
    tokens of one sequence are not, so they understate the spread over sequences; perplexity has none."""

    name = "causal_lm"
    metrics = ("loss", "accuracy", "perplexity", "loss_stderr", "accuracy_stderr")

    def forward(self, model: Model, batch: Batch) -> Any:
        """The model on the batch's token ids and attention mask (never its labels: the loss is computed here)."""
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise UserError(f"loss=causal_lm needs dict batches with input_ids (and attention_mask), got "
                            f"{describe(batch)}; use data=text or a tokenizer's output")
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return model(**inputs)

    def sums(self, out: Any, batch: Batch) -> Sums:
        """Summed token losses (float64), correct tokens, their per-token squares and the number of predicted
        tokens (a token not predicted adds 0 to every sum)."""
        logits = output_tensor(out)
        if logits.dim() != 3:
            raise UserError(f"loss=causal_lm needs per-token logits [batch, tokens, vocabulary]; the model gives "
                            f"{tuple(logits.shape)}: load it with a language-model head (model.task=causal_lm)")
        labels = self.labels(batch)[:, 1:]
        logits = logits[:, :-1].float()
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
                              reduction="none")
        valid = labels != IGNORE
        correct = ((logits.argmax(-1) == labels) & valid).sum()
        return {"loss": per.sum(dtype=torch.float64), "accuracy": correct, "count": valid.sum(),
                "sumsq/loss": squares(per), "sumsq/accuracy": correct}

    def labels(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The batch's labels, or its input ids with padding (attention mask 0) marked as not predicted."""
        if "labels" in batch:
            return batch["labels"]
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        return ids if mask is None else ids.masked_fill(mask == 0, IGNORE)

    def means(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        """Mean token loss and accuracy, perplexity = exp(mean loss), and the standard errors of the two means."""
        loss, accuracy = sums["loss"] / sums["count"], sums["accuracy"] / sums["count"]
        with np.errstate(over="ignore"):  # a far point's perplexity overflows to inf, which is what it is
            perplexity = np.exp(loss)
        return {"loss": loss, "accuracy": accuracy, "perplexity": perplexity} | self.standard_errors(sums)

    def autograd(self, model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The summed token cross-entropy in float32 (one fused kernel), and the number of predicted tokens."""
        logits = output_tensor(self.forward(model, batch))[:, :-1]
        labels = self.labels(cast(Mapping[str, Any], batch))[:, 1:]
        loss = F.cross_entropy(wide(logits.reshape(-1, logits.shape[-1])), labels.reshape(-1), ignore_index=IGNORE,
                               reduction="sum")
        return loss, (labels != IGNORE).sum()


class CustomLoss(Loss):
    """fn(model, batch, **kwargs) -> (summed loss, item count[, {metric: summed value}[, {metric: summed squares}]]).

    Every metric is reported as its sum over the count; the metrics are those of the first result. The optional
    fourth entry holds, for the loss ("loss") and any extra metric, the sum over the batch's items of the squares
    of their per-item values: those metrics get standard errors (`<metric>_stderr`); without it, none."""

    name = "custom"

    def __init__(self, fn: Callable[..., Any], target: str, kwargs: dict[str, Any]) -> None:
        self.fn, self.target, self.kwargs = fn, target, kwargs
        self.metrics = ("loss",)
        self.squared: tuple[str, ...] | None = None  # metrics with per-item squares, known after probe

    def forward(self, model: Model, batch: Batch) -> Any:
        """The function's result on the batch (it calls the model itself)."""
        return self.fn(model, batch, **self.kwargs)

    def sums(self, out: Any, batch: Batch) -> Sums:
        """The result as summed metrics, checked: a tensor or number loss, a count, a dict of extra sums, a dict of
        summed per-item squares."""
        if not isinstance(out, tuple | list) or len(out) not in (2, 3, 4):
            raise UserError(f"loss._target_={self.target} returned {type(out).__name__}; return (summed loss, number "
                            "of items) or (summed loss, number of items, {metric: summed value}[, {metric: summed "
                            "squares of per-item values}])")
        loss, count = out[0], out[1]
        if count is None:
            raise UserError(f"loss._target_={self.target} returned no item count; return (summed loss, number of "
                            "items[, metrics])")
        extra = out[2] if len(out) >= 3 else {}
        if not isinstance(extra, Mapping):
            raise UserError(f"loss._target_={self.target}: the third entry must be a dict {{metric: summed value}}")
        squared = out[3] if len(out) == 4 else {}
        if not isinstance(squared, Mapping):
            raise UserError(f"loss._target_={self.target}: the fourth entry must be a dict {{metric: summed squares "
                            "of its per-item values}")
        device = loss.device if isinstance(loss, torch.Tensor) else None
        sums = {"loss": torch.as_tensor(loss, device=device).to(torch.float64).reshape(()),
                "count": torch.as_tensor(count, device=device).reshape(())}
        for name, value in extra.items():
            if name in ("loss", "count") or is_stderr(str(name)) or str(name).startswith(SQUARES):
                raise UserError(f"loss._target_={self.target}: an extra metric may not be called {name!r}")
            sums[str(name)] = torch.as_tensor(value, device=device).to(torch.float64).reshape(())
        for name, value in squared.items():
            if str(name) not in sums or name == "count":
                raise UserError(f"loss._target_={self.target}: summed squares of {name!r}, which is not the loss or "
                                "one of its metrics")
            sums[SQUARES + str(name)] = torch.as_tensor(value, device=device).to(torch.float64).reshape(())
        if self.squared is not None and set(map(str, squared)) != set(self.squared):
            raise UserError(f"loss._target_={self.target} returned summed squares of {sorted(map(str, squared))} on "
                            f"one batch and of {sorted(self.squared)} on another; return the same on every batch")
        return sums

    def autograd(self, model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | int]:
        """The function's summed loss, differentiable as it returned it."""
        out = self.forward(model, batch)
        loss = self.sums(out, batch)  # checks the result's form
        value = out[0] if isinstance(out[0], torch.Tensor) else loss["loss"]
        return value, loss["count"]

    def probe(self, model: Model, batch: Batch) -> tuple[str, ...]:
        """Call the function once on a batch: its extra metrics' names become this loss's metrics, and those it
        returns summed squares for get standard errors."""
        self.squared = None
        with reading(model):
            sums = self.sums(self.forward(model, batch), batch)
        count = float(sums["count"])
        if not count > 0 or math.isinf(count):
            raise UserError(f"loss._target_={self.target} returned the count {count}; it must be a finite number "
                            "of items > 0")
        means = ["loss", *[k for k in sums if k not in ("loss", "count") and not k.startswith(SQUARES)]]
        self.squared = tuple(k.removeprefix(SQUARES) for k in sums if k.startswith(SQUARES))
        self.metrics = (*means, *[stderr_name(m) for m in means if m in self.squared])
        return self.metrics

    def config(self) -> dict[str, Any]:
        """The function's import path and arguments."""
        return {"name": self.name, "_target_": self.target, "kwargs": self.kwargs}


def make_loss(cfg: LossConfig) -> Loss:
    """The configured loss: cross_entropy, mse, causal_lm, or the custom function loss._target_ (imported; nothing the
    config does not name is imported)."""
    if cfg.name == "cross_entropy":
        return CROSS_ENTROPY
    if cfg.name == "mse":
        return MeanSquaredError()
    if cfg.name == "causal_lm":
        return CausalLM()
    target = cast(str, cfg._target_)  # set: LossConfig checks it for custom
    try:
        fn = import_object(target, "loss._target_")
    except UserError as err:
        raise UserError(f"{err}; give module.function of a function (model, batch) -> (summed loss, count[, metrics])"
                        ) from None
    if not callable(fn):
        raise UserError(f"loss._target_={target!r} is a {type(fn).__name__}, not a function")
    return CustomLoss(fn, target, dict(cfg.kwargs))

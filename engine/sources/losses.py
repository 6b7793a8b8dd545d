"""Losses and metrics: what a grid point's value is. A loss takes the model and one batch (any structure) and gives
summed values (the loss, its metrics, the count of items they sum over) and, for every metric that is a mean over
items, the sum of the squares of its per-item values (`sumsq/<metric>`); means and their standard errors
(`<metric>_stderr`) are taken once over all batches, so there is no host sync per batch and no extra forward pass.
Built in: cross_entropy (accuracy), mse, causal_lm (perplexity, token accuracy), and custom (a function of the
config's choosing); engine/sources/loss_kinds.py holds the last three and make_loss.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.core.errors import UserError
from engine.core.grad_modes import reading
from engine.sources.structure import Batch

STDERR = "_stderr"  # suffix of a metric's standard-error array in a store: loss_stderr, accuracy_stderr
SQUARES = "sumsq/"  # prefix, in Loss.sums, of a metric's summed squares of per-item values: sumsq/loss
METRICS: tuple[str, ...] = ("loss", "accuracy", "loss_stderr", "accuracy_stderr")  # cross_entropy's arrays

Batches = Iterable[Batch]
Model = Callable[..., Any]  # an nn.Module, or a functional call of one (the vmap path)
Sums = dict[str, torch.Tensor]  # summed metrics and "count", on the device

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_TRANSPOSED_FROM = 256  # batch size from which summed_cross_entropy reduces over a transposed copy
LABEL_KEYS = ("labels", "label", "targets", "target", "y")  # where a dict batch keeps its targets


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA; fp32 is a no-op; reduced precision on a CPU is refused (it is off by default)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type != "cuda":
        raise UserError(f"eval.precision={precision} is for CUDA devices; use eval.precision=fp32 on {device}")
    return torch.autocast("cuda", dtype=_DTYPES[precision])


def stderr_name(metric: str) -> str:
    """The store's name of a metric's standard-error array (loss -> loss_stderr)."""
    return metric + STDERR


def is_stderr(name: str) -> bool:
    """Whether a store array holds standard errors (figures and summaries draw them with their metric, not alone)."""
    return name.endswith(STDERR)


def standard_error(total: Any, squares: Any, count: Any) -> Any:
    """Standard error of a mean from per-item sums: sqrt(s^2 / n) with s^2 = (sum x^2 - n mean^2) / (n - 1).

    Numbers (one point: plain floats, no numpy overhead per point) or numpy arrays (K points), the same float64
    operations either way; NaN where it is undefined (one item, or a non-finite sum)."""
    if isinstance(count, int | float):
        n = float(count)
        mean = float(total) / n
        var = (float(squares) - mean * mean * n) / (n - 1) if n > 1 else math.nan
        return math.sqrt(max(var, 0.0) / n) if math.isfinite(var) else math.nan
    ns = np.asarray(count, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.asarray(total, dtype=np.float64) / ns
        variances = (np.asarray(squares, dtype=np.float64) - means * means * ns) / (ns - 1)
        return np.where(np.isfinite(variances) & (ns > 1), np.sqrt(np.maximum(variances, 0.0) / ns), np.nan)


def squares(items: torch.Tensor) -> torch.Tensor:
    """Sum of the squares of per-item float32 values, in float64 (each square is exact there); out of place, as
    vmap has no batching rule for in-place squares."""
    wide64 = items.double()
    return (wide64 * wide64).sum(-1)


def item_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each item's cross-entropy of [N, C] logits, float32 (summed_cross_entropy sums these).

    Each item's loss is log sum exp(z - max z) + (max z - z_y): two non-negative terms, so nothing cancels
    however small the loss. For large N it reduces over a [C, N] copy: reductions over a short inner class
    dimension are slow on CPUs (about 3x at N = 1797, C = 10).
    """
    logits = logits.float()
    if logits.dim() != 2 or len(y) < _TRANSPOSED_FROM:
        return F.cross_entropy(logits, y, reduction="none")
    columns = logits.t().contiguous()  # no copy when the logits are a [C, N] product's view
    top = columns.amax(0)
    margin = top - columns.gather(0, y.unsqueeze(0)).squeeze(0)  # exactly 0 where y is the top class
    return (columns - top).exp_().sum(0).log_().add_(margin)


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the cross-entropy of [N, C] float32 logits, summed in float64 (subtracting two batch
    sums of size ~N log C instead would lose digits on a trained model)."""
    return item_cross_entropy(logits, y).sum(dtype=torch.float64)


def autograd_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy that gradients and Hessian-vector products differentiate: one fused float32 kernel
    (the float64 item sum of summed_cross_entropy is for reported values, where digits of a small loss matter)."""
    return F.cross_entropy(logits, y, reduction="sum")


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in float32 when it is in a narrower float type (bf16, fp16 autocast outputs); float64 stays float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def output_tensor(out: Any, what: str = "the model") -> torch.Tensor:
    """The prediction in a model's output: the tensor itself, `.logits` (transformers), or the first entry."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        logits = out[0]
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"{what} returned a {type(out).__name__} with no tensor or .logits in it; return the "
                        "predictions, or use loss=custom to read them yourself")
    return logits


def inputs_and_target(batch: Batch, loss: str) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """(positional inputs, keyword inputs, target) of a batch: (x, y) / [x, y] pairs, or a dict whose label key
    (labels, label, targets, ...) is the target and whose other entries are the model's keyword arguments."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return (batch[0],), {}, batch[1]
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is not None:
            return (), {k: v for k, v in batch.items() if k != key}, batch[key]
    raise UserError(f"loss={loss} cannot unpack a batch of {describe(batch)}: it needs (inputs, targets) pairs or "
                    f"dicts with one of the keys {', '.join(LABEL_KEYS)}; use loss=custom for other batches")


def describe(batch: Batch) -> str:
    """A short description of a batch's structure for error messages."""
    if isinstance(batch, Mapping):
        return f"dict with keys {', '.join(map(str, batch))}"
    if isinstance(batch, tuple | list):
        return f"{type(batch).__name__} of {len(batch)}"
    return type(batch).__name__


class Loss:
    """A loss and its metrics over batches. `forward` calls the model on a batch; `sums` turns the output into summed
    metrics, their per-item sums of squares and the item count; `means` divides once at the end (means and standard
    errors); `autograd` is the differentiable summed loss. `metrics` names the store's arrays: the means, then the
    `<metric>_stderr` of each metric whose per-item squares are summed."""

    name = "loss"
    metrics: tuple[str, ...] = ("loss",)

    def forward(self, model: Model, batch: Batch) -> Any:
        """The model's output on one batch (what sums reads)."""
        args, kwargs, _ = inputs_and_target(batch, self.name)
        return model(*args, **kwargs)

    def sums(self, out: Any, batch: Batch) -> Sums:
        """{"loss": summed loss (float64), other summed metrics, "sumsq/<metric>": summed squares of the per-item
        values of a metric that is a mean over items, "count": items summed over}."""
        raise NotImplementedError

    def stacked_sums(self, out: Any, batch: Batch, k: int) -> Sums:
        """sums for K stacked points ([K, ...] output of the vmap path), each entry of shape [K]."""
        return torch.vmap(lambda o: self.sums(o, batch))(out)

    def means(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        """The reported metrics from the summed ones: every sum over the count, and the standard errors."""
        count = sums["count"]
        out = {m: sums[m] / count for m in self.metrics if not is_stderr(m)}
        return out | self.standard_errors(sums)

    def standard_errors(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        """{<metric>_stderr: standard error of the metric's mean} for each such array in metrics."""
        bases = [m.removesuffix(STDERR) for m in self.metrics if is_stderr(m)]
        return {stderr_name(b): standard_error(sums[b], sums[SQUARES + b], sums["count"]) for b in bases}

    def autograd(self, model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | int]:
        """(summed loss that gradients and Hessian-vector products differentiate, item count)."""
        out = self.sums(self.forward(model, batch), batch)
        return out["loss"].to(torch.float32), out["count"]

    def train_loss(self, model: Model, batch: Batch) -> torch.Tensor:
        """The mean loss over a batch that a training step minimizes."""
        total, count = self.autograd(model, batch)
        return total / count

    def probe(self, model: Model, batch: Batch) -> tuple[str, ...]:
        """The metrics this loss reports on this model and batch, after checking it can read them (one call)."""
        with reading(model):
            self.sums(self.forward(model, batch), batch)
        return self.metrics

    def config(self) -> dict[str, Any]:
        """What identifies the loss in a store."""
        return {"name": self.name}


class CrossEntropy(Loss):
    """Mean cross-entropy of [N, C] logits against integer labels, with accuracy (first maximum, as argmax).

    An item is a sample: the standard errors are those of the mean over samples (accuracy's items are 0 or 1)."""

    name = "cross_entropy"
    metrics = METRICS

    def sums(self, out: Any, batch: Batch) -> Sums:
        """Summed float64 loss (no cancellation, see summed_cross_entropy), correct predictions, and their per-item
        squares (a correct prediction's square is itself)."""
        logits, y = output_tensor(out), self.target(batch)
        per = item_cross_entropy(logits, y)
        correct = (logits.max(1).indices == y).sum()
        return {"loss": per.sum(dtype=torch.float64), "accuracy": correct, "count": torch.tensor(len(y)),
                "sumsq/loss": squares(per), "sumsq/accuracy": correct}

    def target(self, batch: Batch) -> torch.Tensor:
        """The integer labels of a batch."""
        return inputs_and_target(batch, self.name)[2]

    def stacked_sums(self, out: Any, batch: Batch, k: int) -> Sums:
        """K points at once: one cross-entropy over the [K, N, C] logits, summed per point in float64. Logits that
        are a [K, C, N] product's view (engine.sweep.stacked's narrow head) are reduced over classes as they lie."""
        logits, y = wide(output_tensor(out)), self.target(batch)
        if logits.dim() == 3 and logits.transpose(1, 2).is_contiguous():
            columns = logits.transpose(1, 2)
            per = F.cross_entropy(columns, y.expand(k, -1), reduction="none")
            correct = (columns.max(1).indices == y).sum(1)
        else:
            per = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none").view(k, -1)
            correct = (logits.max(-1).indices == y).sum(1)
        return {"loss": per.sum(1, dtype=torch.float64), "accuracy": correct, "count": torch.full((k,), len(y)),
                "sumsq/loss": squares(per), "sumsq/accuracy": correct}

    def autograd(self, model: Model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | int]:
        """One fused float32 cross-entropy kernel over the batch (see autograd_cross_entropy)."""
        y = self.target(batch)
        return autograd_cross_entropy(wide(output_tensor(self.forward(model, batch))), y), len(y)

    def train_loss(self, model: Model, batch: Batch) -> torch.Tensor:
        """torch's mean cross-entropy (the engine's training has always minimized exactly this)."""
        return F.cross_entropy(output_tensor(self.forward(model, batch)), self.target(batch))


CROSS_ENTROPY = CrossEntropy()


def evaluate(model: Model, batches: Batches, precision: str = "fp32", loss: Loss = CROSS_ENTROPY) -> dict[str, float]:
    """The loss's mean metrics of model over all batches; one host sync at the end."""
    total: Sums = {}
    with torch.inference_mode():
        for batch in batches:
            with autocast(first_device(batch), precision):
                out = loss.forward(model, batch)
            for key, value in loss.sums(out, batch).items():
                total[key] = value if key not in total else total[key] + value
    if not total:
        raise UserError("the eval split is empty; check eval.samples and data")
    summed = {key: value.item() for key, value in total.items()}
    check_count(summed["count"], loss.name)
    return {k: float(v) for k, v in loss.means(summed).items()}


def check_count(count: float, name: str) -> None:
    """Refuse a non-positive or non-finite item count (a custom loss's, or an empty split)."""
    if not count > 0 or count != count or count == float("inf"):
        raise UserError(f"loss={name} summed over {count} items; the count must be a finite number > 0 (a custom "
                        "loss returns (summed loss, number of items[, metrics]))")


def first_device(batch: Batch) -> torch.device:
    """The device of a batch's first tensor (the CPU for a batch without tensors)."""
    if isinstance(batch, torch.Tensor):
        return batch.device
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, tuple | list) else []
    for v in values:
        device = first_device(v)
        if device.type != "cpu":
            return device
    return torch.device("cpu")

"""engine.sources.losses and loss_kinds: every loss's means and their standard errors against a float64 computation
over the items, causal_lm's padding, -100 labels and perplexity, autograd's value and gradient, the vmap path, custom
metrics (with and without per-item squares), one-line refusals."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.config.schema import LossConfig, ModelConfig
from engine.core.errors import UserError
from engine.sources.hf import build_hf_model
from engine.sources.loss_kinds import CausalLM, CustomLoss, MeanSquaredError, make_loss
from engine.sources.losses import CROSS_ENTROPY, Loss, check_count, evaluate
from engine.sweep.vectorized import PointsEvaluator
from hf_fixtures import save_tiny_lm, tiny_text

SIZES = (5, 5, 2)  # batch sizes: the last batch is short
KINDS = ("cross_entropy", "mse", "causal_lm", "custom", "custom_se")
TOKENS = 12


def squared_and_mae(model: nn.Module, batch: Any, scale: float = 1.0) -> tuple[Any, ...]:
    """A custom loss: scale * summed per-item mean squared error, the item count, and the summed mean abs error."""
    x, y = batch
    err = model(x) - y
    return scale * err.pow(2).mean(1).sum(), torch.ones_like(y[:, 0]).sum(), {"mae": err.abs().mean(1).sum()}


def squared_and_mae_with_squares(model: nn.Module, batch: Any, scale: float = 1.0) -> tuple[Any, ...]:
    """squared_and_mae with the fourth entry: the summed squares of each item's loss and mean abs error."""
    x, y = batch
    err = model(x) - y
    loss, mae = scale * err.pow(2).mean(1), err.abs().mean(1)
    count = torch.ones_like(y[:, 0]).sum()  # a tensor: the vmap path maps over the result
    return loss.sum(), count, {"mae": mae.sum()}, {"loss": loss.pow(2).sum(), "mae": mae.pow(2).sum()}


def custom_loss(squares: bool = False) -> Loss:
    fn = "squared_and_mae_with_squares" if squares else "squared_and_mae"
    return make_loss(LossConfig(name="custom", _target_=f"{__name__}.{fn}", kwargs={"scale": 0.5}))


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    folder = save_tiny_lm(tmp_path_factory.mktemp("hf") / "lm", tiny_text(20_000))
    return build_hf_model(ModelConfig(name="hf", path=str(folder)))


def token_batch(vocab: int, n: int, seed: int, pad: bool = True) -> dict[str, torch.Tensor]:
    """n rows of TOKENS random ids; with pad, every other row has its last (row + 2) tokens masked out."""
    ids = torch.randint(vocab, (n, TOKENS), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row in range(0, n, 2) if pad else ():
        mask[row, TOKENS - row - 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def setup(kind: str, lm: nn.Module) -> tuple[nn.Module, list[Any], Loss]:
    """The model, batches of SIZES and loss of one kind (a custom loss already probed for its metrics)."""
    if kind == "causal_lm":
        return lm, [token_batch(lm.config.vocab_size, n, seed) for seed, n in enumerate(SIZES)], CausalLM()
    torch.manual_seed(0)
    outputs = 5 if kind == "cross_entropy" else 3
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, outputs)).eval()
    g = torch.Generator().manual_seed(1)
    target = (lambda n: torch.randint(0, outputs, (n,), generator=g)) if kind == "cross_entropy" else (
        lambda n: torch.randn(n, 3, generator=g))
    batches = [(torch.randn(n, 6, generator=g), target(n)) for n in SIZES]
    loss = {"cross_entropy": CROSS_ENTROPY, "mse": MeanSquaredError()}.get(kind) or custom_loss(kind == "custom_se")
    loss.probe(model, batches[0])
    return model, batches, loss


def reference(kind: str, model64: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """One batch's float64 summed loss (differentiable), summed metrics and count, computed directly."""
    if kind == "causal_lm":
        ids = batch["input_ids"]
        logits = model64(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch.get("labels", ids.masked_fill(batch["attention_mask"] == 0, -100))[:, 1:]
        keep = target != -100
        per = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        return {"loss": per[keep].sum(), "accuracy": (logits.argmax(-1) == target)[keep].sum(), "count": keep.sum()}
    x, y = batch
    out = model64(x.double())
    if kind == "cross_entropy":
        return {"loss": F.cross_entropy(out, y, reduction="sum"), "accuracy": (out.argmax(1) == y).sum(),
                "count": torch.tensor(len(y))}
    err = out - y.double()
    custom = kind.startswith("custom")
    sums = {"loss": err.pow(2).mean(1).sum() * (0.5 if custom else 1.0), "count": torch.tensor(len(y))}
    return sums | ({"mae": err.abs().mean(1).sum()} if custom else {})


def reference_items(kind: str, model64: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """One batch's float64 per-item values of every metric that is a mean over items (a causal LM's items are its
    predicted tokens), computed directly."""
    if kind == "causal_lm":
        ids = batch["input_ids"]
        logits = model64(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = batch.get("labels", ids.masked_fill(batch["attention_mask"] == 0, -100))[:, 1:]
        keep = target != -100
        per = F.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        return {"loss": per[keep], "accuracy": (logits.argmax(-1) == target)[keep].double()}
    x, y = batch
    out = model64(x.double())
    if kind == "cross_entropy":
        return {"loss": F.cross_entropy(out, y, reduction="none"), "accuracy": (out.argmax(1) == y).double()}
    err = out - y.double()
    custom = kind.startswith("custom")
    items = {"loss": err.pow(2).mean(1) * (0.5 if custom else 1.0)}
    return items | ({"mae": err.abs().mean(1)} if custom else {})


def reference_means(kind: str, model: nn.Module, batches: list[Any]) -> dict[str, float]:
    """The float64 means over all batches' items, on a float64 copy of model, and the standard errors (sample
    standard deviation over sqrt(n)) of those the loss reports them for."""
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        parts = [reference_items(kind, model64, b) for b in batches]
    items = {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}
    means = {k: float(v.mean()) for k, v in items.items()}
    if kind != "custom":  # a custom loss without per-item squares has no standard errors
        means |= {f"{k}_stderr": float(v.std(ddof=1) / math.sqrt(len(v))) for k, v in items.items()}
    return means | ({"perplexity": math.exp(means["loss"])} if kind == "causal_lm" else {})


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_matches_float64_means_over_uneven_batches(kind: str, lm: nn.Module) -> None:
    """evaluate's means of every loss over batches of several sizes equal a float64 computation's."""
    model, batches, loss = setup(kind, lm)
    want = reference_means(kind, model, batches)
    got = evaluate(model, batches, loss=loss)
    assert set(got) == set(want) == set(loss.metrics)
    assert (kind == "custom") == (not any(m.endswith("_stderr") for m in got))
    for metric, value in want.items():
        assert got[metric] == pytest.approx(value, rel=1e-5), metric


@pytest.mark.parametrize("kind", KINDS)
def test_autograd_sum_and_gradient_match_float64(kind: str, lm: nn.Module) -> None:
    """Loss.autograd gives sums' loss (to float32 rounding), its count, and the float64 reference's gradient."""
    model, batches, loss = setup(kind, lm)
    batch = batches[0]
    with torch.no_grad():
        sums = loss.sums(loss.forward(model, batch), batch)
    total, count = loss.autograd(model, batch)
    assert total.dtype == torch.float32 and total.item() == pytest.approx(sums["loss"].item(), rel=2e-6)
    assert int(count) == int(sums["count"])
    grads = torch.autograd.grad(total, list(model.parameters()))
    model64 = copy.deepcopy(model).double()
    want = torch.autograd.grad(reference(kind, model64, batch)["loss"], list(model64.parameters()))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-6 * float(w.abs().max()))


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_points_equal_evaluate_at_each_point(kind: str, lm: nn.Module) -> None:
    """PointsEvaluator at K=3 points gives each point's evaluate metrics (weights set there by hand)."""
    model, batches, loss = setup(kind, lm)
    model = copy.deepcopy(model)
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(3)
    dirs = [[0.05 * torch.randn(t.shape, generator=g) for t in theta] for _ in range(2)]
    coords = np.array([[0.0, 0.0], [0.5, -0.25], [-1.0, 0.75]])
    got = PointsEvaluator(model, names, theta, dirs, batches, loss=loss).evaluate(coords)
    for k, (c0, c1) in enumerate(coords):
        with torch.no_grad():
            for p, t, d0, d1 in zip(model.parameters(), theta, *dirs):
                p.copy_(t + (c0 * d0 + c1 * d1))
        want = evaluate(model, batches, loss=loss)
        assert set(got) == set(want)
        for metric, value in want.items():
            assert got[metric][k] == pytest.approx(value, rel=1e-5), (metric, k)
    assert got["loss"][0] != pytest.approx(got["loss"][2], rel=1e-3)


def test_causal_lm_without_padding_is_the_models_own_loss(lm: nn.Module) -> None:
    """With no padding, causal_lm's loss at theta* is outputs.loss of model(input_ids, labels=input_ids)."""
    batch = token_batch(lm.config.vocab_size, 4, seed=7, pad=False)
    with torch.no_grad():
        want = lm(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss.item()
    assert evaluate(lm, [batch], loss=CausalLM())["loss"] == pytest.approx(want, rel=1e-5)
    assert evaluate(lm, [{"input_ids": batch["input_ids"]}], loss=CausalLM())["loss"] == pytest.approx(want, rel=1e-5)


def test_causal_lm_padding_is_not_counted(lm: nn.Module) -> None:
    """Padded tokens (attention mask 0) count for nothing: the loss is each row's unpadded tokens' mean."""
    batch = token_batch(lm.config.vocab_size, 4, seed=8)
    model64 = copy.deepcopy(lm).double()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            row = ids[: int(mask.sum())][None]
            total += F.cross_entropy(model64(input_ids=row).logits[0, :-1], row[0, 1:], reduction="sum").item()
            count += row.shape[1] - 1
    assert count < 4 * (TOKENS - 1)
    sums = CausalLM().sums(CausalLM().forward(lm, batch), batch)
    assert int(sums["count"]) == count
    assert evaluate(lm, [batch], loss=CausalLM())["loss"] == pytest.approx(total / count, rel=1e-5)


def test_causal_lm_ignores_minus_100_labels(lm: nn.Module) -> None:
    """-100 entries of a labels key are not predicted: the loss is the model's own loss with those labels."""
    batch = token_batch(lm.config.vocab_size, 3, seed=9, pad=False)
    labels = batch["input_ids"].clone()
    labels[:, :5] = -100
    labels[1, 8] = -100
    with torch.no_grad():
        want = lm(input_ids=batch["input_ids"], labels=labels).loss.item()
    labelled = batch | {"labels": labels}
    assert int(CausalLM().sums(CausalLM().forward(lm, labelled), labelled)["count"]) == 3 * (TOKENS - 5) - 1
    assert evaluate(lm, [labelled], loss=CausalLM())["loss"] == pytest.approx(want, rel=1e-5)


def test_causal_lm_perplexity_and_token_accuracy(lm: nn.Module) -> None:
    """Perplexity is exp(mean loss) and accuracy the share of predicted tokens whose argmax is the next token."""
    batch = token_batch(lm.config.vocab_size, 4, seed=10)
    with torch.no_grad():
        for t in range(TOKENS - 1):  # rows 1 and 2 are greedy (row 2 padded): every next token is predicted
            batch["input_ids"][1:3, t + 1] = lm(input_ids=batch["input_ids"][1:3, : t + 1]).logits[:, -1].argmax(-1)
    got = evaluate(lm, [batch], loss=CausalLM())
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]), rel=1e-12)
    with torch.no_grad():
        logits = lm(**batch).logits[:, :-1]
    keep = batch["attention_mask"][:, 1:] == 1
    hits = (logits.argmax(-1) == batch["input_ids"][:, 1:])[keep]
    assert 0 < hits.sum() < len(hits)
    assert got["accuracy"] == pytest.approx(hits.double().mean().item(), rel=1e-12)


def test_custom_loss_extra_metric_is_probed_and_averaged(lm: nn.Module) -> None:
    """A custom loss's extra metric is found by probe and reported as its sum over the count."""
    model, batches, _ = setup("mse", lm)
    loss = custom_loss()
    assert loss.metrics == ("loss",)
    assert loss.probe(model, batches[0]) == ("loss", "mae") and loss.metrics == ("loss", "mae")
    got = evaluate(model, batches, loss=loss)
    want = reference_means("custom", model, batches)
    assert set(got) == {"loss", "mae"} and got["mae"] == pytest.approx(want["mae"], rel=1e-5)
    with_squares = custom_loss(squares=True)
    assert with_squares.probe(model, batches[0]) == ("loss", "mae", "loss_stderr", "mae_stderr")


def test_custom_loss_squares_of_unknown_metrics_or_changing_keys_are_refused_in_one_line() -> None:
    """Summed squares must name the loss or one of its metrics, be a dict, and name the same ones on every batch."""
    batch = (torch.randn(2, 6), torch.randn(2, 3))
    linear = nn.Linear(6, 3)
    one = torch.tensor(1.0)
    refused(lambda: custom((one, 2, {}, {"mae": one})).probe(linear, batch), "mine.fn", "'mae'", "not the loss")
    refused(lambda: custom((one, 2, {}, [one])).probe(linear, batch), "mine.fn", "fourth entry")
    refused(lambda: custom((one, 2, {"loss_stderr": one})).probe(linear, batch), "mine.fn", "'loss_stderr'")
    results = iter([(one, 2, {}, {"loss": one}), (one, 2, {}, {})])
    changing = CustomLoss(lambda model, batch: next(results), "mine.fn", {})
    changing.probe(linear, batch)
    refused(lambda: evaluate(linear, [batch], loss=changing), "mine.fn", "on every batch")


def refused(call: Callable[[], Any], *parts: str) -> None:
    """call raises a one-line UserError naming every part."""
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


def custom(result: Any) -> CustomLoss:
    return CustomLoss(lambda model, batch: result, "mine.fn", {})


class NoLMHead(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(len(input_ids), 7)


def test_batches_a_loss_cannot_read_are_refused_in_one_line() -> None:
    """cross_entropy on a 3-tuple, causal_lm on a tuple or without an LM head, mse of the wrong size: one line."""
    x, y, ids = torch.randn(4, 6), torch.randint(0, 3, (4,)), torch.randint(0, 9, (4, 5))
    refused(lambda: evaluate(nn.Linear(6, 3), [(x, y, y)]), "loss=cross_entropy", "tuple of 3")
    refused(lambda: evaluate(nn.Linear(6, 3), [(ids, ids)], loss=CausalLM()), "loss=causal_lm", "tuple of 2")
    refused(lambda: evaluate(NoLMHead(), [{"input_ids": ids}], loss=CausalLM()), "loss=causal_lm", "(4, 7)")
    refused(lambda: evaluate(nn.Linear(6, 3), [(x, torch.randn(4, 2))], loss=MeanSquaredError()),
            "loss=mse", "(4, 3)", "(4, 2)")


@pytest.mark.parametrize("count", [0, -2.0, float("nan"), float("inf")])
def test_custom_loss_bad_counts_are_refused_in_one_line(count: float) -> None:
    """A zero, negative, NaN or infinite count is refused by evaluate, check_count and probe."""
    batch = (torch.randn(2, 6), torch.randn(2, 3))
    refused(lambda: evaluate(nn.Linear(6, 3), [batch], loss=custom((torch.tensor(1.0), count))), "loss=custom")
    refused(lambda: check_count(count, "custom"), "loss=custom", str(count))
    refused(lambda: custom((torch.tensor(1.0), count)).probe(nn.Linear(6, 3), batch), "mine.fn", str(float(count)))


def test_custom_loss_results_of_the_wrong_form_are_refused_in_one_line() -> None:
    """A custom loss returning no count, a bare tensor or a non-dict third entry is refused in one line."""
    batch = (torch.randn(2, 6), torch.randn(2, 3))
    linear = nn.Linear(6, 3)
    refused(lambda: evaluate(linear, [batch], loss=custom((torch.tensor(1.0), None))), "mine.fn", "no item count")
    refused(lambda: evaluate(linear, [batch], loss=custom(torch.tensor(1.0))), "mine.fn", "Tensor")
    refused(lambda: custom((torch.tensor(1.0), 2, [3])).probe(nn.Linear(6, 3), batch), "mine.fn", "dict")


@pytest.mark.parametrize("target, part", [("no_such_module_xyz.fn", "cannot be imported"),
                                          (f"{__name__}.no_such_fn", "cannot be imported"),
                                          ("math.pi", "not a function")])
def test_custom_target_that_is_not_a_function_is_refused_in_one_line(target: str, part: str) -> None:
    """loss._target_ that cannot be imported or is not callable is refused in one line naming it."""
    refused(lambda: make_loss(LossConfig(name="custom", _target_=target)), target, part)

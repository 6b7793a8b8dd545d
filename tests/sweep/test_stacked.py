"""engine.sweep.stacked: K points per pass over the traced graph keep each point's numbers.

Checked against a float64 evaluation of the perturbed model (no engine code) on an MLP (batched Linears, cached
input products, narrow head computed transposed), a ResNet with BatchNorm in 'states' mode (convs and BN under
vmap, log-space variances) and a model that reads a parameter directly, calls tensor methods and runs a Linear on
[N, T, d] inputs. Also: the input layer's products are used (the pass does fewer FLOPs than the dense forward),
and an untraceable model gets no evaluator, with a logged reason.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.batches import device_batches
from engine.sources.data import synthetic_images
from engine.sources.losses import evaluate
from engine.sources.models import MLP, CifarResNet
from engine.sources.splits import Split
from engine.sweep.stacked import make_stacked
from helpers import DataDependent, float64_point, randomize_batchnorm

POINTS = np.array([(a, b) for a in np.linspace(-1.0, 1.0, 4) for b in np.linspace(-0.6, 0.4, 2)])


class Sequence(nn.Module):
    """Tokens of 4 features: a Linear on [N, T, d], a scale parameter read directly, tanh, a mean over T."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.scale = nn.Parameter(torch.ones(16))
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, 16, 4)
        h = torch.tanh(self.embed(h) * self.scale)
        h = F.gelu(self.mix(h)).mean(1)
        return self.head(h)


CASES = {
    "mlp": (lambda: MLP(64, [32, 32], 10), (1, 8, 8), "weights", "biasbn"),
    "resnet-states": (lambda: CifarResNet(8, 10, 3, 4, shortcut=True), (3, 8, 8), "states", "none"),
    "sequence": (Sequence, (1, 8, 8), "weights", "none"),
}


def _setup(case: str):
    make, shape, over, ignore = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    randomize_batchnorm(model)
    x, y = synthetic_images(shape, 300, 10, 1)
    named = perturbed_tensors(model, over)
    names, tensors = [n for n, _ in named], [t.detach() for _, t in named]
    scale = 0.05 if over == "states" else 1.0  # keep the perturbed running variances positive
    directions = [[d * scale for d in dk] for dk in random_directions(tensors, 2, 3, "filter", ignore)]
    return model, names, tensors, directions, x, y


@pytest.mark.parametrize("case", list(CASES))
def test_stacked_points_match_float64(case):
    model, names, theta, directions, x, y = _setup(case)
    batches = device_batches(Split(x, y), 128, torch.device("cpu"))  # 3 batches, the last one short
    ev = make_stacked(model, names, theta, directions, batches)
    assert ev is not None
    assert ev.input_layer is not None  # the first Linear, or the ResNet's first conv (BN is not folded here)
    got = ev.evaluate(POINTS)
    for i, point in enumerate(POINTS):
        want = float64_point(model, names, theta, directions, x, y, point)
        assert got["loss"][i] == pytest.approx(want["loss"], rel=1e-5), (case, point)
        assert abs(got["accuracy"][i] - want["accuracy"]) <= 1.0 / len(y) + 1e-12


def test_stacked_pass_uses_the_cached_input_products():
    model, names, theta, directions, x, y = _setup("mlp")
    batches = [(x, y)]
    ev = make_stacked(model, names, theta, directions, batches)
    assert ev is not None and ev.input_layer is not None
    with FlopCounterMode(display=False) as dense:
        evaluate(model, batches)
    with FlopCounterMode(display=False) as stacked:
        ev.evaluate(POINTS[:4])
    input_layer = 2 * len(x) * 64 * 32
    products = 2 * 4 * 2 * len(x) * 32  # the K x 2 coordinates times the products, one matrix product
    weights = 2 * 4 * 2 * sum(t.numel() for t in theta)  # theta* + coords @ directions, all tensors at once
    assert stacked.get_total_flops() == 4 * (dense.get_total_flops() - input_layer) + products + weights


def test_untraceable_model_gets_no_stacked_evaluator(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)  # runs route engine logs to rank files
    model = DataDependent()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]
    dirs = [[torch.randn_like(t) for t in theta] for _ in range(2)]
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
    with caplog.at_level(logging.INFO, logger="engine.sweep.stacked"):
        assert make_stacked(model, names, theta, dirs, batches) is None
    assert "stacked graph unavailable for DataDependent" in caplog.text

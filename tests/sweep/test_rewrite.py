"""The graph rewrites of the K = 1 path keep each point's numbers.

Checked against a float64 evaluation of the perturbed model, with and without BatchNorm, in 'states' mode, on a
non-square grid. Also: the input layer's cache serves only the registered batches at the point they were set
for; an untraceable model falls back with a logged reason. (A whole run with and without the rewrites:
e2e/test_sweep_runs.py; the summed cross-entropy: sources/test_losses.py.)
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from engine.directions.vectors import perturbed_tensors, random_directions
from engine.sources.batches import device_batches
from engine.sources.data import synthetic_images
from engine.sources.models import MLP, CifarResNet
from engine.sources.splits import Split
from engine.sweep.perturb import Perturber
from engine.sweep.rewrite import rewrite
from engine.sweep.vectorized import PointRunner
from helpers import DataDependent, float64_point, randomize_batchnorm

POINTS = np.array([(a, b) for a in np.linspace(-1.0, 1.0, 5) for b in np.linspace(-0.6, 0.4, 3)])


CASES = {
    "mlp": (lambda: MLP(64, [32, 32], 10), (1, 8, 8), "weights", "biasbn", False),
    "mlp-biases": (lambda: MLP(64, [32, 32], 10), (1, 8, 8), "weights", "none", False),
    "resnet-bn": (lambda: CifarResNet(8, 10, 3, 4, shortcut=True), (3, 8, 8), "weights", "biasbn", True),
    "plain-bn-states": (lambda: CifarResNet(8, 10, 3, 4, shortcut=False), (3, 8, 8), "states", "none", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rewritten_points_match_float64(case):
    make, shape, over, ignore, channels_last = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    randomize_batchnorm(model)
    x, y = synthetic_images(shape, 300, 10, 1)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    named = perturbed_tensors(model, over)
    names, tensors = [n for n, _ in named], [t for _, t in named]
    scale = 0.05 if over == "states" else 1.0  # keep the perturbed running variances positive
    directions = [[d * scale for d in dk] for dk in random_directions([t.detach() for t in tensors], 2, 3,
                                                                      "filter", ignore)]
    perturber = Perturber(tensors, directions)
    batches = device_batches(Split(x, y), 128, torch.device("cpu"))  # 3 batches, the last one short
    fast = rewrite(model, names, perturber.theta, directions, x[:8])
    assert fast is not None
    fast.register([b for b, _ in batches])
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert fast.folded == convs  # every conv of these nets is followed by a BatchNorm
    assert (fast.input_layer is not None) == case.startswith("mlp")
    runner = PointRunner(model, perturber, batches, fast=fast)
    theta = [t.clone() for t in perturber.theta]
    with perturber.active():
        got = runner.run(POINTS)
        again = runner.run(POINTS[::-1])  # the folded and cached tensors follow every change of point
    for i, point in enumerate(POINTS):
        want = float64_point(model, names, theta, directions, x, y, point)
        assert got["loss"][i] == pytest.approx(want["loss"], rel=1e-5), (case, point)
        assert abs(got["accuracy"][i] - want["accuracy"]) <= 1.0 / len(y) + 1e-12
        assert again["loss"][len(POINTS) - 1 - i] == pytest.approx(got["loss"][i], rel=1e-6)
    for t, t0 in zip(tensors, theta):
        assert torch.equal(t, t0)  # theta* restored bitwise


def test_input_layer_serves_only_registered_batches_at_their_point():
    torch.manual_seed(0)
    model = MLP(64, [16], 10).eval()
    named = perturbed_tensors(model, "weights")
    names, tensors = [n for n, _ in named], [t for _, t in named]
    directions = random_directions([t.detach() for t in tensors], 2, 0, "filter", "none")
    perturber = Perturber(tensors, directions)
    x = torch.randn(50, 1, 8, 8)
    fast = rewrite(model, names, perturber.theta, directions, x[:8])
    assert fast is not None and fast.input_layer is not None
    fast.register([x])
    with perturber.active(), torch.inference_mode():
        perturber.set((0.7, -0.4))
        fast.set_point((0.7, -0.4))
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)  # cached products
        before = model(x)
        other = x.clone()
        torch.testing.assert_close(fast(other), model(other), rtol=1e-5, atol=1e-5)  # not registered: the layer
        perturber.set((0.1, 0.2))  # weights moved without set_point: the cache must not answer
        assert (model(x) - before).abs().max() > 1e-2  # a stale answer would be this far off
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_untraceable_model_falls_back(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("engine"), "propagate", True)
    model = DataDependent()
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    with caplog.at_level(logging.WARNING, logger="engine.sweep.rewrite"):
        assert rewrite(model, names, theta, [theta, theta], torch.randn(4, 1, 8, 8)) is None
    assert "graph rewrites unavailable for DataDependent" in caplog.text

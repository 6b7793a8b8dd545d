"""engine.sources.batchnorm alone: the layers and buffers recalibration touches, the statistics it computes (those of
train-mode passes, checked by hand), and the mode and momenta it leaves the model in."""

from __future__ import annotations

import copy

import torch

from engine.directions.vectors import perturbed_tensors
from engine.sources.batchnorm import BatchNormRecalibrator, batchnorm_buffers
from engine.sources.models import CifarResNet
from engine.sweep.perturb import Perturber


def test_recalibrated_batchnorm_statistics_are_restored():
    torch.manual_seed(0)
    model = CifarResNet(8, 10, 1, 4, shortcut=True).eval()
    x = torch.randn(64, 1, 8, 8)
    batches = [(x[:32], None), (x[32:], None)]
    tensors = [t for _, t in perturbed_tensors(model, "weights")]
    directions = [[torch.randn_like(t) * 0.1 for t in tensors]]
    saved = [t.clone() for t in batchnorm_buffers(model)]
    perturber = Perturber(list(tensors), directions, after_set=BatchNormRecalibrator(model, batches),
                          also_restore=batchnorm_buffers(model))
    with perturber.active():
        perturber.set((0.5,))
        reference = copy.deepcopy(model)
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        reference.train()
        with torch.no_grad():
            for xb, _ in batches:
                reference(xb)
        for got, want in zip(batchnorm_buffers(model), batchnorm_buffers(reference)):
            torch.testing.assert_close(got, want)
        assert not torch.equal(batchnorm_buffers(model)[0], saved[0])
        assert not model.training  # eval mode kept
    for got, want in zip(batchnorm_buffers(model), saved):
        assert torch.equal(got, want)

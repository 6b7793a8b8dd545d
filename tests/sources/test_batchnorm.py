"""engine.sources.batchnorm alone: the layers and buffers recalibration touches, the statistics it computes (those of
train-mode passes, checked by hand), and the mode and momenta it leaves the model in."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.directions.vectors import perturbed_tensors
from engine.sources.batchnorm import BatchNormRecalibrator, batchnorm_buffers, batchnorm_layers
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


class Net(nn.Module):
    """Conv -> BatchNorm2d (momentum 0.3) -> Linear -> BatchNorm1d, then a BatchNorm without running statistics and a
    LayerNorm that recalibration must leave alone."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn2d = nn.BatchNorm2d(3, momentum=0.3)
        self.lin = nn.Linear(3 * 4 * 4, 5)
        self.bn1d = nn.BatchNorm1d(5)
        self.untracked = nn.BatchNorm1d(5, track_running_stats=False)
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn2d(self.conv(x)))
        h = torch.relu(self.bn1d(self.lin(h.flatten(1))))
        return self.head(self.norm(self.untracked(h)))


def net_and_batches() -> tuple[Net, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The net with stale statistics (as at a moved point) and three batches, the last one short."""
    torch.manual_seed(0)
    net = Net()
    for bn in (net.bn2d, net.bn1d):
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(7.0)
        bn.num_batches_tracked.fill_(100)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(37, 1, 6, 6) * 2 + 0.5
    return net, [(x[:16], torch.zeros(16)), (x[16:32], torch.zeros(16)), (x[32:], torch.zeros(5))]


def batch_statistics(net: Net, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """By hand, in float64: each tracked BatchNorm's input mean and unbiased variance over one batch, the layers
    before it normalizing with the batch's own (biased) statistics, as in train mode."""
    def normalized(h: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, dims: tuple[int, ...]) -> torch.Tensor:
        shape = (1, -1) + (1,) * (h.dim() - 2)
        mean, var = h.mean(dims), h.var(dims, unbiased=False)
        return ((h - mean.view(shape)) / (var.view(shape) + bn.eps).sqrt() * bn.weight.double().view(shape)
                + bn.bias.double().view(shape))

    with torch.no_grad():
        h1 = F.conv2d(x.double(), net.conv.weight.double(), net.conv.bias.double())
        stats = [(h1.mean((0, 2, 3)), h1.var((0, 2, 3), unbiased=True))]
        h2 = F.linear(torch.relu(normalized(h1, net.bn2d, (0, 2, 3))).flatten(1), net.lin.weight.double(),
                      net.lin.bias.double())
        stats.append((h2.mean(0), h2.var(0, unbiased=True)))
    return stats


def test_layers_and_buffers_are_the_tracked_batchnorms():
    net, _ = net_and_batches()
    assert batchnorm_layers(net) == [net.bn2d, net.bn1d]  # not the one without running statistics, nor LayerNorm
    buffers = batchnorm_buffers(net)
    expected = [net.bn2d.running_mean, net.bn2d.running_var, net.bn2d.num_batches_tracked,
                net.bn1d.running_mean, net.bn1d.running_var, net.bn1d.num_batches_tracked]
    assert len(buffers) == 6 and all(b is e for b, e in zip(buffers, expected))  # the live tensors, to restore in place
    assert batchnorm_layers(nn.Sequential(nn.Linear(3, 3), nn.ReLU())) == []


def test_recalibration_is_the_plain_average_of_train_mode_batch_statistics():
    """Every tracked layer's running mean and variance become the average over the batches (each batch counted once,
    the short one too) of what a train-mode pass sees, computed here by hand."""
    net, batches = net_and_batches()
    net.eval()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    BatchNormRecalibrator(net, batches)()
    per_batch = [batch_statistics(net, x) for x, _ in batches]
    for k, bn in enumerate((net.bn2d, net.bn1d)):
        mean = torch.stack([s[k][0] for s in per_batch]).mean(0)
        var = torch.stack([s[k][1] for s in per_batch]).mean(0)
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert int(bn.num_batches_tracked) == len(batches)
    assert all(torch.equal(p, params[n]) and p.grad is None for n, p in net.named_parameters())  # weights untouched


@pytest.mark.parametrize("training", [False, True])
def test_mode_and_momenta_are_restored(training):
    net, batches = net_and_batches()
    net.train(training)
    recalibrate = BatchNormRecalibrator(net, batches)
    recalibrate()
    assert all(m.training == training for m in net.modules())
    assert (net.bn2d.momentum, net.bn1d.momentum) == (0.3, 0.1)
    once = [b.clone() for b in batchnorm_buffers(net)]
    recalibrate()  # a second point: recomputed from scratch, not averaged with the first
    assert all(torch.equal(a, b) for a, b in zip(batchnorm_buffers(net), once))
    broken = BatchNormRecalibrator(net, [*batches[:1], (torch.randn(4, 2, 6, 6), torch.zeros(4))])  # 2 channels
    with pytest.raises(RuntimeError):
        broken()
    assert all(m.training == training for m in net.modules())  # restored however the passes end
    assert (net.bn2d.momentum, net.bn1d.momentum) == (0.3, 0.1)

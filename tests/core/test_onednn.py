"""Autograd through a channels_last ResNet on one CPU thread (torchrun's default) must not corrupt the heap:
torch 2.13's oneDNN weight gradient of a strided 1x1 conv does, unless engine.core.onednn turns oneDNN off for it."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from engine.core.onednn import safe_autograd

SCRIPT = """
import torch, torch.nn.functional as F
from engine.curvature.hessian import HessianOperator
from engine.sources.models import CifarResNet
from engine.curvature.sharpness import epsilon_sharpness
torch.manual_seed(0)
model = CifarResNet(8, 10, 1, 4, True).eval().to(memory_format=torch.channels_last)  # 1x1 stride-2 shortcuts
x = torch.randn(128, 1, 8, 8).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (128,))
params = list(model.parameters())
op = HessianOperator(model, params, [(x, y)], keep_graph=True)
for _ in range(5):
    hv = op.matvec(torch.randn(op.size))
result = epsilon_sharpness(lambda: F.cross_entropy(model(x), y), params, 1e-3, steps=10)
print("ok", bool(torch.isfinite(hv).all()), result["sharpness"] >= 0)
"""


def test_hessian_and_sharpness_on_one_thread_with_channels_last() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-500:]}"
    assert done.stdout.split() == ["ok", "True", "True"]


def test_guard_is_on_only_for_channels_last_cpu_weights() -> None:
    conv, shortcut = torch.nn.Conv2d(3, 4, 3, 2), torch.nn.Conv2d(3, 4, 1, 2)
    with safe_autograd([*conv.parameters(), *shortcut.parameters()]):  # contiguous, 1x1 included: oneDNN stays
        assert torch.backends.mkldnn.enabled
    conv = conv.to(memory_format=torch.channels_last)
    with safe_autograd(conv.parameters()):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled

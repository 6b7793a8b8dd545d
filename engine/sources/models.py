"""Models: the CIFAR-style ResNet family of Li et al. (with and without shortcuts), an MLP, any nn.Module.

Also loads checkpoints, refusing one that does not fit the model with a line naming the mismatch.
"""

from __future__ import annotations

import itertools
import re
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.config.schema import ModelConfig
from engine.core.errors import UserError
from engine.core.imports import import_object


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; the identity (or 1x1 projection) shortcut is optional."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.use_shortcut = shortcut
        self.proj: nn.Module = nn.Identity()
        if shortcut and (stride != 1 or c_in != c_out):
            self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.use_shortcut:
            out = out + self.proj(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 (He et al. 2016, section 4.2): 3 stages of n blocks, widths w, 2w, 4w."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int, shortcut: bool) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"ResNet depth {depth} is not of the form 6n+2 with n >= 1 (8, 20, 56, 110, ...)")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c = [], width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c, c_out, stride, shortcut))
                c = c_out
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


class MLP(nn.Module):
    """Fully connected ReLU net on flattened inputs."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(sizes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int | None) -> nn.Module:
    """Build the configured model for inputs of input_shape (C, H, W) and num_classes outputs."""
    if cfg.name == "torchvision":
        from engine.sources.vision import build_torchvision_model  # torchvision: an optional extra

        return build_torchvision_model(cfg)
    if cfg.name == "timm":
        from engine.sources.timm_models import build_timm_model  # timm: in the optional [vision] extra

        return build_timm_model(cfg)
    if cfg.name == "hf":
        from engine.sources.hf import build_hf_model  # transformers: an optional extra

        return build_hf_model(cfg)
    if cfg.name == "custom":
        factory = import_object(cast(str, cfg._target_), "model._target_")  # set: ModelConfig checks it
        return factory(**dict(cfg.kwargs))
    if not input_shape:
        raise UserError(f"model={cfg.name} needs image or vector inputs; this data set's inputs are not one tensor "
                        "(use model=hf, torchvision or custom)")
    in_channels = cfg.in_channels or input_shape[0]
    classes = cfg.num_classes or num_classes
    if classes is None:
        raise UserError(f"model={cfg.name} needs a number of classes and the data cannot tell; set model.num_classes")
    if cfg.image_size is not None and tuple(input_shape[1:]) != (cfg.image_size, cfg.image_size):
        raise UserError(f"model.image_size={cfg.image_size} but the data's samples have shape {input_shape}")
    family = re.fullmatch(r"(resnet|plain)(\d+)", cfg.name)
    if family:
        return CifarResNet(int(family[2]), classes, in_channels, cfg.width, shortcut=family[1] == "resnet")
    if cfg.name == "mlp":
        return MLP(int(torch.Size(input_shape).numel()), list(cfg.hidden), classes)
    raise UserError(
        f"unknown model name {cfg.name!r}: use resnet<6n+2> (resnet20, resnet56, resnet110), "
        "plain<6n+2> (plain20, ...), mlp, torchvision, timm, hf, or custom with model._target_"
    )

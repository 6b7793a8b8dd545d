"""engine.sources.models: model family shapes and sizes, custom targets, bad names."""

from __future__ import annotations

import pytest
import torch

from engine.config.schema import ModelConfig
from engine.core.errors import UserError
from engine.sources.models import build_model


@pytest.mark.parametrize(("name", "params"), [("resnet20", 272474), ("plain20", 269722), ("resnet56", 855770)])
def test_cifar_family_sizes_and_forward(name, params):
    model = build_model(ModelConfig(name=name), (3, 32, 32), 10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_digits_shapes_mlp_and_shortcuts():
    resnet = build_model(ModelConfig(name="resnet8", width=8), (1, 8, 8), 10)
    assert resnet(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    mlp = build_model(ModelConfig(name="mlp", hidden=[32]), (1, 8, 8), 10)
    assert mlp(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    plain = build_model(ModelConfig(name="plain8"), (1, 8, 8), 10)
    assert not any(b.use_shortcut for b in plain.modules() if hasattr(b, "use_shortcut"))


def test_custom_target_and_bad_names():
    model = build_model(ModelConfig(name="custom", _target_="torch.nn.Linear", kwargs={"in_features": 4,
                                                                                   "out_features": 2}), (4,), 2)
    assert isinstance(model, torch.nn.Linear)
    with pytest.raises(UserError, match="unknown model name 'vgg9'"):
        build_model(ModelConfig(name="vgg9"), (3, 32, 32), 10)
    with pytest.raises(UserError, match=r"6n\+2"):
        build_model(ModelConfig(name="resnet21"), (3, 32, 32), 10)
    with pytest.raises(UserError, match="cannot be imported"):
        build_model(ModelConfig(name="custom", _target_="nope.Nothing"), (3, 32, 32), 10)

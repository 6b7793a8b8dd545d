"""timm models (the optional [vision] extra): `model=timm model.arch=resnet50 model.kwargs.num_classes=10` builds
any architecture of `timm.list_models()` with random weights; trained weights come from model.checkpoint (a local
state-dict or .safetensors file, read by engine/sources/checkpoints.py), never from the Hugging Face Hub.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from engine.config.schema import ModelConfig
from engine.core.errors import UserError
from engine.sources.vision import known_architecture, offline_kwargs

DOWNLOADING = ("pretrained", "pretrained_cfg_overlay", "pretrained_cfg")  # arguments that would fetch weights


def build_timm_model(cfg: ModelConfig) -> nn.Module:
    """timm.create_model(model.arch, pretrained=False, **model.kwargs); an unknown architecture or a download asked
    for is refused in one line."""
    timm = _timm()
    arch = known_architecture(cfg, timm.list_models(), "timm", "timm.list_models()")
    kwargs = offline_kwargs(cfg, DOWNLOADING)
    try:
        return timm.create_model(arch, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # an unknown argument, or a value it refuses
        raise UserError(f"model.kwargs={dict(cfg.kwargs)} do not fit timm's {arch} ({' '.join(str(err).split())}); "
                        "give only arguments of its constructor (e.g. num_classes)") from None


def _timm() -> Any:
    """The timm module, or a UserError naming the extra that installs it."""
    try:
        import timm
    except ImportError as err:
        raise UserError(f"model=timm needs timm: pip install 'landscape-engine[vision]' ({err})") from None
    return timm

"""timm models (the optional [vision] extra): `model=timm model.arch=resnet50 model.kwargs.num_classes=10` builds
any architecture of `timm.list_models()` with random weights; trained weights come from model.checkpoint (a local
state-dict or .safetensors file, read by engine/sources/checkpoints.py), never from the Hugging Face Hub.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from engine.config.schema import ModelConfig
from engine.core.errors import UserError

DOWNLOADING = ("pretrained", "pretrained_cfg_overlay", "pretrained_cfg")  # arguments that would fetch weights


def build_timm_model(cfg: ModelConfig) -> nn.Module:
    """timm.create_model(model.arch, pretrained=False, **model.kwargs); an unknown architecture or a download asked
    for is refused in one line."""
    timm = _timm()
    arch, names = str(cfg.arch), timm.list_models()
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise UserError(f"model.arch={arch!r} is not a timm architecture{hint}; set model.arch to a name in "
                        "timm.list_models()")
    kwargs = dict(cfg.kwargs)
    asked = [key for key in DOWNLOADING if kwargs.pop(key, None) not in (None, False)]
    if asked:
        raise UserError(f"model.kwargs.{asked[0]} would download weights; nothing is downloaded here: give a local "
                        "state-dict file as model.checkpoint=<path>")
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

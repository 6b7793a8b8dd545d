"""Checkpoints: reading a saved state dict (`{'state_dict': ...}` or bare), checked against the model it is meant
for, and the fingerprint that tells which weights a store was made from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.core.errors import UserError

State = dict[str, torch.Tensor]


def read_checkpoint(path: str | Path, model: nn.Module) -> tuple[State, Any]:
    """The state dict of a checkpoint and the whole saved object, refused unless it fits model's architecture."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give an existing .pt file "
                        "(training writes <run>/checkpoints/epoch_NNN.pt and final.pt)")
    try:
        blob = read_safetensors(path) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)  # tensors and plain containers only: no code is unpickled
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"checkpoint {path} cannot be read as a torch checkpoint ({type(err).__name__}); "
                        "give a .pt file written by torch.save") from None
    state = state_of(blob, path)
    check_state_fits(model, state, str(path))
    return state, blob


def state_of(blob: Any, path: str | Path) -> State:
    """The state dict in a loaded checkpoint (`{'state_dict': ...}` or bare), or a one-line refusal naming path."""
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"checkpoint {path} holds no state_dict of tensors; save model.state_dict() "
                        "or {'state_dict': model.state_dict()}")
    return state


def read_safetensors(path: Path) -> State:
    """The tensors of a .safetensors file (the format Hugging Face and torchvision users share weights in)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"checkpoint {path} is a .safetensors file: pip install safetensors (or the engine's "
                        "[hf] extra)") from None
    return load_file(str(path), device="cpu")


def load_state(path: str | Path, model: nn.Module) -> State:
    """The checked state dict of a checkpoint, without loading it into the model (another point of weight space)."""
    return read_checkpoint(path, model)[0]


def load_checkpoint(model: nn.Module, path: str | Path) -> Any:
    """Load a checkpoint's weights into model (checked first); returns the whole saved object (epoch, ...)."""
    state, blob = read_checkpoint(path, model)
    model.load_state_dict(state)
    return blob


def check_state_fits(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Raise a UserError naming the first missing, unexpected or mis-shaped keys of state for model."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else ""))
    if shapes:
        problems.append(f"shape {'; '.join(shapes[:3])}" + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise UserError(
            f"checkpoint {origin} does not fit model {type(model).__name__}: {' | '.join(problems)}; "
            "check model.name / model.width / data against what the checkpoint was trained with"
        )


def state_fingerprint(model: nn.Module) -> str:
    """A short hash of every tensor of the model's state, to tell which weights a store was made from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, as stored
    return h.hexdigest()[:16]

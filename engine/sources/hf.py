"""Hugging Face models (model=hf): a local folder saved with save_pretrained, loaded safely for sweeps and HVPs."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from engine.config.schema import ModelConfig
from engine.core.errors import UserError

INSTALL = "pip install 'landscape-engine[hf]'"
AUTO_CLASSES = {"causal_lm": "AutoModelForCausalLM", "sequence_classification": "AutoModelForSequenceClassification",
                "image_classification": "AutoModelForImageClassification"}
SAVED = "a folder saved with save_pretrained (config.json and model.safetensors)"
# from_pretrained arguments model.kwargs may not change: no network, no pickled objects, remote code only by its key.
# weights_only matters in transformers 5.24: the final read of pytorch_model.bin uses weights_only=True whatever is
# passed, but dtype="auto" on a config without a dtype first reads the file with the weights_only given.
FORCED = ("local_files_only", "weights_only", "trust_remote_code")


def import_transformers(what: str) -> ModuleType:
    """The transformers package, or one line saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{what} needs the transformers package: {INSTALL}") from None
    return transformers


def build_hf_model(cfg: ModelConfig, weights: bool = True) -> nn.Module:
    """The model at cfg.path with the head of cfg.task, in model.dtype (unless model.kwargs sets dtype), eval mode,
    without a key/value cache, and eager attention so that double backward and torch.vmap work. Without weights, the
    architecture alone from its config.json (float32, parameters as the caller's context makes them: a sharded load
    builds it on the meta device and reads the weights row by row)."""
    folder = model_folder(cfg.path)
    config_json = read_config(folder)
    if "auto_map" in config_json and not cfg.trust_remote_code:
        raise UserError(f"model.path={folder} needs its own modelling code (config.json has auto_map), which is not "
                        "run by default; set model.trust_remote_code=true only if you trust that folder's code")
    clash = sorted(set(FORCED) & set(cfg.kwargs))
    if clash:
        raise UserError(f"model.kwargs may not set {', '.join(clash)} (the folder is read locally, weights without "
                        "pickled objects; remote code only through model.trust_remote_code)")
    transformers = import_transformers("model=hf")
    auto = getattr(transformers, AUTO_CLASSES[cfg.task])
    config = load_config(transformers, folder, cfg.trust_remote_code)
    remote = cfg.trust_remote_code and AUTO_CLASSES[cfg.task] in config_json.get("auto_map", {})
    if not remote and type(config) not in auto._model_mapping:
        has = [task for task, name in AUTO_CLASSES.items()
               if type(config) in getattr(transformers, name)._model_mapping]
        raise UserError(f"model.task={cfg.task}: the {config.model_type} model at model.path={folder} has no such head "
                        f"in transformers; its tasks: {', '.join(has) or 'none of ' + ', '.join(AUTO_CLASSES)}")
    # Eager attention: on CPU, sdpa's fused kernel (_scaled_dot_product_flash_attention_for_cpu) has no double
    # backward ("derivative ... not implemented"), so Hessian-vector products fail, and torch.vmap has no batching
    # rule for it (a slow per-sample fallback with a UserWarning). Eager attention is plain matmuls and softmax.
    kwargs: dict[str, Any] = {"attn_implementation": "eager", "dtype": getattr(torch, cfg.dtype), **dict(cfg.kwargs),
                              "local_files_only": True, "weights_only": True,
                              "trust_remote_code": cfg.trust_remote_code}
    if weights:
        model: Any = quietly(transformers, lambda: auto.from_pretrained(folder, **kwargs), folder, cfg.task)
    else:
        model = auto.from_config(config, attn_implementation="eager", trust_remote_code=cfg.trust_remote_code)
    model.config.use_cache = False  # no key/value cache in the outputs of sweep forwards
    return model.eval()


def model_folder(path: str | None) -> Path:
    """model.path as a folder that holds a config.json and weights, or one line saying what is missing."""
    if not path:
        raise UserError(f"model=hf needs model.path=<{SAVED}>")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(f"model.path={path} does not exist; give {SAVED}")
    if not folder.is_dir():
        raise UserError(f"model.path={path} is a file, not {SAVED}")
    if not (folder / "config.json").is_file():
        raise UserError(f"model.path={path} holds no config.json; give {SAVED}")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("pytorch_model*.bin")):
        raise UserError(f"model.path={path} holds no weights (*.safetensors or pytorch_model.bin); give {SAVED}")
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict, read as JSON (no transformers code runs)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"model.path={folder}: config.json cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise UserError(f"model.path={folder}: config.json holds a {type(config).__name__}, not a JSON object")
    return config


def load_config(transformers: ModuleType, folder: Path, trust_remote_code: bool) -> Any:
    """The folder's transformers config object, or one line naming what it could not read."""
    try:
        return transformers.AutoConfig.from_pretrained(folder, local_files_only=True,
                                                       trust_remote_code=trust_remote_code)
    except Exception as err:  # anything transformers raises on a bad config.json becomes one line
        raise UserError(f"model.path={folder}: config.json is not a transformers config ({first_line(err)})") from None


def quietly(transformers: ModuleType, load: Callable[[], nn.Module], folder: Path, task: str) -> nn.Module:
    """Run load() without transformers' progress bar; its errors become one line (pickled objects named as such)."""
    bars = transformers.utils.logging
    was_on = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        return load()
    except pickle.UnpicklingError:
        raise UserError(f"model.path={folder}: pytorch_model.bin holds objects other than tensors, which are not "
                        "unpickled (they could run code); save the model with save_pretrained (safetensors)") from None
    except Exception as err:  # anything transformers raises on a bad folder becomes one line
        raise UserError(f"model.path={folder} could not be loaded for model.task={task} ({first_line(err)})") from None
    finally:
        if was_on:
            bars.enable_progress_bar()


def first_line(err: BaseException) -> str:
    """The exception's type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def check_text_fits(model: nn.Module, vocab_size: int, block_size: int, pad_token_id: int | None = None) -> None:
    """Refuse in one line a tokenizer larger than the model's embedding or blocks longer than its positions (both
    fail deep inside the forward: an index error on CPU, a device-side assert on CUDA), or padding with a token
    other than the model's pad_token_id (a sequence classifier would read each example's logits at a pad)."""
    embeddings: Any = getattr(model, "get_input_embeddings", None)
    embedding = embeddings() if callable(embeddings) else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is not None and vocab_size > rows:
        raise UserError(f"the tokenizer has {vocab_size} tokens but the model's embedding only {rows}; use the "
                        "model's own tokenizer (leave data.tokenizer unset) or one of at most that size")
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions is not None and block_size > positions:
        raise UserError(f"data.block_size={block_size} is longer than the model's {positions} positions; set "
                        f"data.block_size <= {positions}")
    model_pad = getattr(config, "pad_token_id", None)
    if pad_token_id is not None and model_pad is not None and pad_token_id != model_pad:
        raise UserError(f"the tokenizer pads with token {pad_token_id} but the model's config.pad_token_id is "
                        f"{model_pad}; save the model's own tokenizer with it (or leave data.tokenizer unset)")


def hf_parameter_count(cfg: ModelConfig) -> tuple[int, bool]:
    """(parameters of the model at cfg.path with cfg.task's head, whether the folder holds weights), counted on the
    meta device from config.json alone: a 70B model's folder can be planned on a laptop, no weights read."""
    if not cfg.path or not (Path(cfg.path).expanduser() / "config.json").is_file():
        raise UserError(f"model.path={cfg.path} holds no config.json; give {SAVED}")
    folder = Path(cfg.path).expanduser()
    transformers = import_transformers("model=hf")
    config = load_config(transformers, folder, cfg.trust_remote_code)
    auto = getattr(transformers, AUTO_CLASSES[cfg.task])
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=cfg.trust_remote_code)
    weights = any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    return sum(p.numel() for p in model.parameters()), weights

"""The Python API for notebooks and scripts: `engine.landscape(model, data, loss, **overrides)` and
`engine.spectrum(...)`, with the command line's vocabulary (`**{"grid.resolution": (21, 21)}`).

The model is used as it is (never trained), the data is the eval set as given (never re-split), and the run goes
through the same stages, store, resume and figures as `landscape`. Hydra composes the config inside a context that
is left on return, so no global Hydra state remains; errors are raised as one-line UserErrors, never sys.exit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from engine.app.landscape import run_landscape
from engine.app.spectrum import run_spectrum
from engine.app.stages import Given, given_split
from engine.config.check import to_run_config
from engine.config.files import CONF_DIR
from engine.config.schema import LossConfig, register_configs
from engine.core.errors import UserError
from engine.sources.checkpoints import state_fingerprint
from engine.sources.loss_kinds import CustomLoss, make_loss
from engine.sources.losses import Loss
from engine.sources.splits import AnySplit, DatasetSplit, Split, split_fingerprint
from engine.sources.structure import cat, tensors_of

LossLike = str | Loss | nn.Module | Callable[..., Any]


def landscape(model: nn.Module, data: Any, loss: LossLike = "cross_entropy", *, log: bool = False,
              train_data: Any = None, **overrides: Any) -> Any:
    """Sweep the loss landscape of a trained model on an eval set; returns an xarray.Dataset (a variable per metric
    over the grid's coordinates x[, y], the summary in .attrs, the store's path in .attrs["store"]). train_data (same
    forms as data): the training samples a direction=curve run trains its bends on."""
    cfg, resolved, given = _prepare(model, data, loss, overrides)
    if train_data is not None:
        given.train = as_split(train_data)
    result = run_landscape(cfg, resolved, log=log, given=given)
    return _surface_dataset(result.store, result.summary)


def spectrum(model: nn.Module, data: Any, loss: LossLike = "cross_entropy", *, log: bool = False,
             **overrides: Any) -> Any:
    """The Hessian spectra of a trained model's loss at its weights; returns an xarray.Dataset (top eigenvalues,
    the SLQ density over its grid, the numbers in .attrs)."""
    cfg, resolved, given = _prepare(model, data, loss, overrides)
    path, found = run_spectrum(cfg, resolved, log=log, given=given)
    xr = _xarray()
    numbers = {k: v for k, v in found.numbers().items() if v is not None and k != "blocks"}
    variables: dict[str, Any] = {"eigenvalues": ("k", found.eigenvalues), "density": ("lambda", found.density)}
    coords: dict[str, Any] = {"k": range(len(found.eigenvalues)), "lambda": found.grid}
    if found.blocks is not None:  # hessian.blocks: each block's curvature over a `block` axis named like the blocks
        for name in found.blocks.ARRAYS:
            variables[f"block_{name}"] = ("block", getattr(found.blocks, name))
        coords["block"] = list(found.blocks.names)
        numbers["blocks_kind"] = found.blocks.kind
    return xr.Dataset(variables, coords=coords, attrs={**numbers, "store": str(path)})


def as_split(data: Any) -> AnySplit:
    """The eval set a Python caller gave: a Dataset or DataLoader (read in order), a (inputs, targets) pair of
    tensors, or an iterable of batches (tensors, tuples, lists or dicts)."""
    if isinstance(data, Split | DatasetSplit):
        return data
    if isinstance(data, DataLoader):
        return DatasetSplit(data.dataset, None, data.collate_fn or default_collate)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                     and not isinstance(data, list | tuple | Mapping)):
        return DatasetSplit(data, None, default_collate)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return Split(data[0], data[1])
    if isinstance(data, Iterable) and not isinstance(data, torch.Tensor | Mapping | str):
        batches = list(data)
        if batches and all(tensors_of(b) for b in batches):
            whole = cat(batches)
            if isinstance(whole, tuple | list) and len(whole) == 2 and isinstance(whole[1], torch.Tensor):
                return Split(whole[0], whole[1])
            return Split(whole)
    raise UserError(f"data is a {type(data).__name__}; give a torch Dataset, a DataLoader, an (inputs, targets) pair "
                    "of tensors, or a list of batches")


def as_loss(loss: LossLike) -> Loss:
    """A loss name (cross_entropy, mse, causal_lm), a Loss, torch's CrossEntropyLoss / MSELoss, or a function
    fn(model, batch) -> (summed loss, count[, {metric: sum}])."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss == "custom":
            raise UserError("loss='custom' needs the function itself: pass loss=fn")
        return make_loss(LossConfig(name=loss))
    if isinstance(loss, nn.CrossEntropyLoss | nn.MSELoss):
        plain = loss.reduction == "mean" and getattr(loss, "weight", None) is None and not getattr(
            loss, "label_smoothing", 0.0) and getattr(loss, "ignore_index", -100) == -100
        if not plain:
            raise UserError(f"loss={loss!r}: only the plain criterion maps onto a built-in loss; pass a function "
                            "fn(model, batch) -> (summed loss, count) for weights, smoothing or ignore_index")
        return make_loss(LossConfig(name="mse" if isinstance(loss, nn.MSELoss) else "cross_entropy"))
    if callable(loss):
        name = f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__name__)}"
        return CustomLoss(loss, name, {})
    raise UserError(f"loss={loss!r}: give a name (cross_entropy, mse, causal_lm) or a function")


def _prepare(model: nn.Module, data: Any, loss: LossLike,
             overrides: dict[str, Any]) -> tuple[Any, dict[str, Any], Given]:
    """The run's config (conf/ composed with the overrides), its resolved dict naming what was handed over, and the
    handed-over model, eval set and loss."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model is a {type(model).__name__}; give a torch.nn.Module with its trained weights")
    for key in overrides:
        if key.split(".")[0] in ("model", "data", "loss", "train"):
            raise UserError(f"{key}= is given by the arguments of this call (model, data, loss); leave it out")
    split, chosen = as_split(data), as_loss(loss)
    if isinstance(data, DataLoader) and data.batch_size and "eval.batch_size" not in overrides:
        overrides = {**overrides, "eval.batch_size": data.batch_size}
    handed = len(split)
    split = given_split(_compose(_lines(overrides))[0], split)  # what is evaluated: the fingerprint sees all of it
    about = _fingerprints(model, split, chosen)
    cfg, resolved = _compose(_lines({"name": f"{type(model).__name__.lower()}-{about['run']}", **overrides}))
    resolved["model"] = {"name": type(model).__name__, "source": "python"}
    resolved["data"] = {"name": "python", "samples": handed, "fingerprint": about["data"], "seed": cfg.data.seed}
    resolved["loss"] = chosen.config()
    return cfg, resolved, Given(model, split, chosen)


def _compose(lines: list[str]) -> tuple[Any, dict[str, Any]]:
    """conf/config.yaml with these overrides, checked like a command line's, without leaving Hydra initialized."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    was = GlobalHydra.instance().is_initialized()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("config", overrides=lines)
    except UserError:
        raise
    except Exception as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"bad setting in {', '.join(lines)}: {text}") from None
    finally:
        if not was and GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
    return to_run_config(cfg)


def _lines(overrides: dict[str, Any]) -> list[str]:
    """Keyword overrides as Hydra's dotted key=value lines."""
    return [f"{k}={_value(v)}" for k, v in overrides.items()]


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def _fingerprints(model: nn.Module, split: AnySplit, loss: Loss) -> dict[str, str]:
    """Hashes of the eval set (every value of every sample and label) and of the run (weights, eval set, loss): a
    call with other weights, data or loss gets its own store, the same call resumes its own."""
    data = split_fingerprint(split)
    run = hashlib.sha256(f"{state_fingerprint(model)}{data}{json.dumps(loss.config(), sort_keys=True)}".encode())
    return {"data": data, "run": run.hexdigest()[:8]}


def _xarray() -> Any:
    try:
        import xarray
    except ImportError:
        raise UserError("the Python API returns xarray Datasets: pip install xarray") from None
    return xarray


def _surface_dataset(store: Path, summary: dict[str, Any]) -> Any:
    """The store's surfaces as an xarray.Dataset: one variable per metric over the store's dims (x[, y], or
    direction and x for N lines), the summary in attrs."""
    from engine.store.read import read_surface

    xr = _xarray()
    surface = read_surface(store)
    dims = tuple(surface.attrs["dims"])  # x[, y]; (direction, x) for N random lines
    variables = {m: (dims, values) for m, values in surface.metrics.items()}
    return xr.Dataset(variables, coords=dict(zip(dims, surface.coords)),
                      attrs={**summary, "store": str(store), "run_dir": str(store.parent)})

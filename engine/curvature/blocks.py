"""Curvature per block of parameters: the top eigenvalue, lambda_min and trace of each diagonal block of the
Hessian (or GGN), i.e. the curvature along one layer's or module's parameters with all others held fixed.

A block's operator is the full operator's, restricted: products are taken w.r.t. the block's parameters only, on
the same batches and ranks (data-parallel, all-reduced), so every rank holds the same numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.core.errors import UserError

BLOCK_KINDS = ("layer", "module")  # besides a list of parameter-name patterns
ROOT = "(root)"  # the name of a block of parameters the model itself owns


@dataclass
class Block:
    """A named group of parameters (in the order the Hessian takes them)."""

    name: str
    params: list[torch.Tensor]

    @property
    def size(self) -> int:
        """The block's parameter count."""
        return sum(p.numel() for p in self.params)


@dataclass
class BlockSpectra:
    """Each block's lambda_max and lambda_min with their Ritz residual bounds, and its trace with a standard error
    (0 where the trace is exact: blocks no larger than hessian.trace_samples), in the blocks' order."""

    kind: str  # layer | module | patterns
    names: list[str]
    sizes: np.ndarray  # parameters per block
    lambda_max: np.ndarray
    lambda_max_bound: np.ndarray
    lambda_min: np.ndarray
    lambda_min_bound: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    matvecs: int

    ARRAYS = ("sizes", "lambda_max", "lambda_max_bound", "lambda_min", "lambda_min_bound", "trace", "trace_stderr")

    def numbers(self) -> dict[str, Any]:
        """Plain lists for summary.json and the store's attributes."""
        out: dict[str, Any] = {"kind": self.kind, "names": list(self.names)}
        for name in self.ARRAYS:
            out[name] = [int(v) for v in getattr(self, name)] if name == "sizes" else \
                [float(v) for v in getattr(self, name)]
        out["hessian_vector_products"] = self.matvecs
        return out


def blocks_kind(spec: str | Sequence[str]) -> str:
    """layer, module, or patterns (a list of regular expressions)."""
    return spec if isinstance(spec, str) else "patterns"


def parameter_blocks(model: nn.Module, params: list[torch.Tensor], spec: str | Sequence[str]) -> list[Block]:
    """The blocks of `params` (tensors of model) that `spec` names.

    layer: each module owning some of params directly (a shared tensor goes to the first); module: each top-level
    child of model (parameters model owns itself form a block of their own, first); a list of regular expressions:
    the parameters whose names match each (re.search), one block per pattern, overlaps allowed.
    """
    names: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), n)  # a tied tensor goes by its first name
    wanted = list(params)
    if any(id(p) not in names for p in wanted):
        raise UserError("hessian.blocks needs the Hessian's parameters to be the model's own")
    order = {id(p): i for i, p in enumerate(wanted)}

    def ordered(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        unique = {id(t): t for t in tensors if id(t) in order}
        return sorted(unique.values(), key=lambda t: order[id(t)])

    blocks: list[Block] = []
    if isinstance(spec, str):
        if spec not in BLOCK_KINDS:
            raise UserError(f"hessian.blocks={spec!r}: give layer, module or a list of parameter-name patterns")
        taken: set[int] = set()
        groups: list[tuple[str, list[torch.Tensor]]]
        if spec == "layer":
            groups = [(name or ROOT, list(m.parameters(recurse=False))) for name, m in model.named_modules()]
        else:
            groups = [(ROOT, list(model.parameters(recurse=False)))]
            groups += [(name, list(child.parameters())) for name, child in model.named_children()]
        for name, tensors in groups:
            own = [t for t in ordered(tensors) if id(t) not in taken]
            taken.update(id(t) for t in own)
            if own:
                blocks.append(Block(name, own))
        return blocks
    for pattern in spec:
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise UserError(f"hessian.blocks: {pattern!r} is not a regular expression ({err})") from None
        matched = ordered([p for p in wanted if regex.search(names[id(p)])])
        if not matched:
            some = ", ".join(names[id(p)] for p in wanted[:6])
            raise UserError(f"hessian.blocks: no parameter name matches {pattern!r} (names: {some}, ...)")
        blocks.append(Block(pattern, matched))
    if not blocks:
        raise UserError("hessian.blocks=[] names no block; give layer, module, a list of patterns, or null")
    return blocks

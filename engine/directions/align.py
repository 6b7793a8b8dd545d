"""Weight matching (Ainsworth et al. 2023, Git Re-Basin, algorithm 1): permute model B's hidden units to match
model A's before a path between them is swept, so the barrier before and after alignment is one setting apart.

Coordinate descent over the permutation groups of the model's spec (engine/directions/permutations.py): each step
fixes every other group and solves one linear assignment that maximizes sum_w <W_A, P W_B> over the tensors the
group touches; rounds repeat, in a seeded order, until none improves. The permuted B computes the same function as
B. `align_state` is what the interpolation, plane and curve kinds call; `save_aligned` keeps the result for reuse.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.directions.permutations import PermutationSpec, Segment, permutation_spec, permute_state, permute_tensor

State = dict[str, torch.Tensor]


@dataclass
class Alignment:
    """B's state permuted onto A, the permutation of each group (unit i of the result is B's unit perms[g][i]), the
    spec they act through and the rounds of coordinate descent taken."""

    state: State
    perms: list[torch.Tensor]
    spec: PermutationSpec
    rounds: int

    def moved(self) -> float:
        """The fraction of all hidden units that the alignment moved (0: B already matched A unit for unit)."""
        total = sum(self.spec.sizes)
        changed = sum(int((p != torch.arange(len(p))).sum()) for p in self.perms)
        return changed / total if total else 0.0


def _users(spec: PermutationSpec, names: set[str]) -> list[list[tuple[str, int, Segment]]]:
    """For each group, the (tensor, axis, segment) it indexes among the matched tensors."""
    users: list[list[tuple[str, int, Segment]]] = [[] for _ in spec.sizes]
    for tensor, axes in spec.axes.items():
        if tensor in names:
            for axis, segments in axes.items():
                for s in segments:
                    users[s.group].append((tensor, axis, s))
    return users


def _rows(t: torch.Tensor, axis: int, s: Segment, n: int) -> torch.Tensor:
    """The segment's stretch of axis as n rows, one per unit (its block and every other axis flattened)."""
    return t.narrow(axis, s.start, n * s.block).movedim(axis, 0).reshape(n, -1)


def weight_matching(spec: PermutationSpec, state_a: State, state_b: State, names: set[str], max_rounds: int = 100,
                    seed: int = 0) -> tuple[list[torch.Tensor], int]:
    """The permutations of B's groups that maximize the summed inner products with A over the tensors `names`
    (float64 on the CPU), by coordinate descent from the identity; and the rounds it took."""
    from scipy.optimize import linear_sum_assignment  # imported here: about 0.8 s of every run's start otherwise

    a = {n: state_a[n].detach().to("cpu", torch.float64) for n in names}
    b = {n: state_b[n].detach().to("cpu", torch.float64) for n in names}
    perms = [torch.arange(n) for n in spec.sizes]
    users = _users(spec, names)
    order = torch.Generator().manual_seed(seed)
    for round_ in range(1, max_rounds + 1):
        improved = False
        for g in torch.randperm(len(spec.sizes), generator=order).tolist():
            n = spec.sizes[g]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for tensor, axis, s in users[g]:
                other = permute_tensor(tensor, b[tensor], spec, perms, skip_axis=axis)
                cost += _rows(a[tensor], axis, s, n) @ _rows(other, axis, s, n).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            rows = np.arange(n)
            gain = cost.numpy()[rows, cols].sum() - cost.numpy()[rows, perms[g].numpy()].sum()
            if gain > 1e-12 * max(1.0, float(cost.abs().max())):
                perms[g] = torch.as_tensor(cols, dtype=torch.long)
                improved = True
        if not improved:
            return perms, round_
    return perms, max_rounds


def match_weights(model_a: nn.Module, state_b: State, max_rounds: int = 100, seed: int = 0) -> Alignment:
    """B's state permuted to match model A (its parameters; BatchNorm statistics move with their channels), with
    the permutations found. Refused in one line for an architecture without a permutation spec."""
    spec = permutation_spec(model_a)
    state_a = model_a.state_dict()
    names = {n for n, p in model_a.named_parameters(remove_duplicate=False) if n in spec.axes and p.is_floating_point()}
    perms, rounds = weight_matching(spec, state_a, state_b, names, max_rounds, seed)
    return Alignment(permute_state(state_b, spec, perms), perms, spec, rounds)


def align_state(model_a: nn.Module, state_b: State, max_rounds: int = 100, seed: int = 0) -> State:
    """B's state dict with its hidden units permuted to match model A's (weight matching); the same function as B."""
    return match_weights(model_a, state_b, max_rounds, seed).state


def save_aligned(model_a: nn.Module, state_b: State, path: Path, label: str = "B") -> State:
    """Align B to model A, save the aligned state dict to path (a checkpoint any run reads back) and log it."""
    result = match_weights(model_a, state_b)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # every rank aligns alike; each replaces the file whole
    torch.save({"state_dict": result.state, "permutations": dict(zip(result.spec.names, result.perms))}, tmp)
    os.replace(tmp, path)
    logging.getLogger("engine").info(
        "weight matching: %s aligned to A in %d round(s) over %d permutation group(s), %.0f%% of hidden units moved; "
        "saved %s", label, result.rounds, len(result.spec.sizes), 100 * result.moved(), path)
    return result.state

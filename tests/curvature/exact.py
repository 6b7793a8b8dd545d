"""Exact float64 curvature of small models for the tests: the Hessian by torch.autograd.functional.hessian, the
generalized Gauss-Newton matrix J^T H_L J from an explicit Jacobian (jacrev)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev


def exact_hessian(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """The float64 Hessian of the mean cross-entropy over all batches w.r.t. the flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, theta.split([s.numel() for s in shapes]), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat).numpy()


def jacobian(model: nn.Module, inputs: dict[str, Any] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """(output, d output / d flat parameters [output entries, parameters]) of a float64 model."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def out(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, theta.split([s.numel() for s in shapes]), shapes)}
        if isinstance(inputs, dict):
            return functional_call(model, params, (), inputs)
        return functional_call(model, params, inputs)

    z = out(flat).detach()
    return z, jacrev(out)(flat).reshape(z.numel(), -1)


def softmax_block(z: torch.Tensor) -> torch.Tensor:
    """The cross-entropy's Hessian w.r.t. rows of logits z: blockdiag(diag(p) - p p^T)."""
    p = z.softmax(-1).reshape(-1, z.shape[-1])
    return torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p])


def explicit_ggn(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """J^T H_L J of the mean cross-entropy over all batches, from the explicit Jacobian."""
    x = torch.cat([b[0] for b in batches])
    z, jac = jacobian(model, (x,))
    return (jac.T @ softmax_block(z) @ jac / len(x)).numpy()

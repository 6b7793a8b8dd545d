"""K grid points per pass over the model's traced graph, with the layers that dominate a small model's time done by
hand and every other node under torch.vmap.

- The input layer (a Linear or conv fed by the fixed eval inputs alone) is P0 + sum_j c_kj P_j for all K points in
  one matrix product, from the products engine.sweep.rewrite.InputLayer caches per batch.
- Each Linear with stacked weights is one batched matmul ([K, M, in] x [K, in, out], bias added by the GEMM), and a
  ReLU after it runs in place.
- Elementwise activations run on the stacked activations as they are; any other node runs under torch.vmap.

Whole-model vmap (engine.sweep.vectorized) instead expands the input layer for every point and adds biases and
applies ReLUs out of place on permuted layouts; on the small-model workload this path is about 1.7x faster.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call

from engine.sources.batches import EvalBatches
from engine.sources.losses import CROSS_ENTROPY, Loss, evaluate
from engine.sweep.rewrite import HEAD_MAX, InputLayer, find_input_layer
from engine.sweep.vectorized import PointsEvaluator

log = logging.getLogger(__name__)

_ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, torch.tanh, torch.sigmoid, F.gelu, F.silu, F.sigmoid, F.tanh}
_ELEMENTWISE_MODULES = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Identity)
_RELU = (F.relu, torch.relu)


class StackedGraph(PointsEvaluator):
    """A PointsEvaluator whose pass interprets the traced graph node by node (see the module docstring)."""

    def __init__(self, model: nn.Module, names: list[str], theta: list[torch.Tensor],
                 directions: list[list[torch.Tensor]], batches: EvalBatches, precision: str = "fp32",
                 logged: list[bool] | None = None, loss: Loss = CROSS_ENTROPY, budget_gb: float = 1.0) -> None:
        super().__init__(model, names, theta, directions, batches, precision, logged, loss)
        self.gm = fx.symbolic_trace(model)
        self.input_layer = find_input_layer(self.gm, names, theta, directions, budget_gb * 2**30)
        self.gm.recompile()
        if self.input_layer is not None and isinstance(batches, list):
            self.input_layer.register([b[0] for b in batches if isinstance(b, tuple | list)])
        self.modules = dict(self.gm.named_modules())
        path = {id(m): p for p, m in model.named_modules()}
        self.owned: dict[str, dict[str, str]] = {}  # call_module target -> {local tensor name: perturbed name}
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                module = self.modules[node.target]
                module = module.layer if isinstance(module, InputLayer) else module
                prefix = path.get(id(module), node.target)
                self.owned[node.target] = {n.removeprefix(prefix + "."): n for n in names
                                           if n.startswith(prefix + ".")}
        self.nodes = list(self.gm.graph.nodes)
        order = {n: i for i, n in enumerate(self.nodes)}
        self.free_after: dict[fx.Node, list[fx.Node]] = {n: [] for n in self.nodes}
        for node in self.nodes:
            if node.users:
                self.free_after[max(node.users, key=order.__getitem__)].append(node)
        output = self.nodes[-1].args[0]  # a narrow final Linear is computed as a [K, C, M] product
        self.heads = {output} if isinstance(output, fx.Node) and output.op == "call_module" and type(
            self.modules[cast(str, output.target)]) is nn.Linear and cast(
            nn.Linear, self.modules[cast(str, output.target)]).out_features <= HEAD_MAX else set()
        self._stacked_products: dict[int, torch.Tensor] = {}
        self._coords: torch.Tensor | None = None

    def pass_output(self, params: dict[str, torch.Tensor], coords: torch.Tensor, batch: Any) -> Any:
        """The model's output at the K points on one batch, [K, ...]."""
        self._coords = coords
        return self.loss.forward(lambda *args, **kwargs: self.run(params, args, kwargs), batch)

    def run(self, params: dict[str, torch.Tensor], args: tuple, kwargs: dict[str, Any]) -> Any:
        """Interpret the graph on the model's inputs with the K points' stacked tensors."""
        env: dict[fx.Node, Any] = {}
        stacked: set[fx.Node] = set()
        fresh: set[fx.Node] = set()  # values this pass made that only their one user reads (overwritable)
        inputs = iter(args)
        for node in self.nodes:
            if node.op == "placeholder":
                env[node] = next(inputs) if node.target not in kwargs else kwargs[node.target]
            elif node.op == "get_attr":
                target = cast(str, node.target)
                if target in params:
                    env[node] = params[target]
                    stacked.add(node)
                else:
                    env[node] = operator.attrgetter(target)(self.gm)
            elif node.op == "output":
                return env[cast(fx.Node, node.args[0])]  # the graph's single output node
            else:
                env[node] = self._node(node, env, stacked, fresh, params)
            for done in self.free_after[node]:
                env.pop(done, None)
        raise RuntimeError("the traced graph has no output")

    def _node(self, node: fx.Node, env: dict[fx.Node, Any], stacked: set[fx.Node], fresh: set[fx.Node],
              params: dict[str, torch.Tensor]) -> Any:
        args = cast(tuple[Any, ...], fx.node.map_arg(node.args, env.__getitem__))
        kwargs = cast(dict[str, Any], fx.node.map_arg(node.kwargs, env.__getitem__))
        batched_in = any(n in stacked for n in node.all_input_nodes)
        own: dict[str, torch.Tensor] = {}
        module: nn.Module | None = None
        if node.op == "call_module":
            module = self.modules[cast(str, node.target)]
            own = {local: params[full] for local, full in self.owned[cast(str, node.target)].items()}
        single_use = len(node.users) == 1
        if isinstance(module, InputLayer):  # (h, x): the layer's input and the model's
            out = None if batched_in else self._input_products(args[0], args[1])
            stacked.add(node)
            fresh.update([node] if single_use else [])
            if out is not None:
                return out
            layer, h, h_stacked = module.layer, args[0], node.args[0] in stacked
            if type(layer) is nn.Linear:
                return stacked_linear(h, h_stacked, own["weight"], own.get("bias", layer.bias))
            return torch.vmap(lambda p, v: functional_call(layer, p, (v,)), in_dims=(0, 0 if h_stacked else None))(
                own, h)
        if type(module) is nn.Linear and len(args) == 1 and not kwargs and "weight" in own:
            stacked.add(node)
            fresh.update([node] if single_use else [])
            return stacked_linear(args[0], node.args[0] in stacked, own["weight"], own.get("bias", module.bias),
                                  transposed=node in self.heads)
        if not batched_in and not own:
            return self._apply(node, module, args, kwargs)
        stacked.add(node)
        if self._elementwise(node, module, own, args, kwargs):
            source = node.args[0]
            if self._is_relu(node, module) and source in fresh:
                return torch.relu_(args[0])
            return self._apply(node, module, args, kwargs)
        return self._vmapped(node, module, own, env, stacked)

    def _input_products(self, h: torch.Tensor, x: Any) -> torch.Tensor | None:
        """P0 + coords @ [P_1..P_d] for the K points, [K, *P0.shape]; None when the products are not cached."""
        layer, coords = self.input_layer, self._coords
        if layer is None or coords is None or not isinstance(x, torch.Tensor):
            return None
        key = id(x)
        if key not in self._stacked_products:
            products = layer._products_of(h, x)
            if products is None:
                return None
            self._stacked_products[key] = torch.stack([p.reshape(-1) for p in products])
        table = self._stacked_products[key]
        out = torch.addmm(table[0], coords.to(table.dtype), table[1:])
        return out.view(len(coords), *layer._products[key][0].shape)

    def _elementwise(self, node: fx.Node, module: nn.Module | None, own: dict[str, torch.Tensor], args: tuple,
                     kwargs: dict[str, Any]) -> bool:
        """Whether the node is an activation applied to one stacked tensor (it commutes with the stacking)."""
        one_tensor = len(args) == 1 and isinstance(args[0], torch.Tensor) and not own
        if module is not None:
            return one_tensor and isinstance(module, _ELEMENTWISE_MODULES) and not kwargs
        if node.op == "call_function":
            return one_tensor and node.target in _ELEMENTWISE_FUNCTIONS and not kwargs.get("inplace", False)
        return one_tensor and node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid") and not kwargs

    @staticmethod
    def _is_relu(node: fx.Node, module: nn.Module | None) -> bool:
        return (type(module) is nn.ReLU or (node.op == "call_function" and node.target in _RELU)
                or (node.op == "call_method" and node.target == "relu"))

    @staticmethod
    def _apply(node: fx.Node, module: nn.Module | None, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The node's operation on plain values."""
        if module is not None:
            return module(*args, **kwargs)
        if node.op == "call_method":
            first, *rest = args
            return getattr(first, cast(str, node.target))(*rest, **kwargs)
        return cast(Callable[..., Any], node.target)(*args, **kwargs)

    def _vmapped(self, node: fx.Node, module: nn.Module | None, own: dict[str, torch.Tensor],
                 env: dict[fx.Node, Any], stacked: set[fx.Node]) -> Any:
        """The node under torch.vmap over the K points: stacked inputs and tensors batched, the rest shared."""
        inputs = list(node.all_input_nodes)

        def one_point(tensors: dict[str, torch.Tensor], *values: Any) -> Any:
            lookup = dict(zip(inputs, values))
            args = fx.node.map_arg(node.args, lookup.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, lookup.__getitem__)
            if module is not None:
                return functional_call(module, tensors, args, kwargs) if tensors else module(*args, **kwargs)
            return self._apply(node, None, args, kwargs)

        dims = (0 if own else None, *(0 if n in stacked else None for n in inputs))
        return torch.vmap(one_point, in_dims=dims)(own, *(env[n] for n in inputs))


def stacked_linear(h: torch.Tensor, h_stacked: bool, weight: torch.Tensor, bias: torch.Tensor | None,
                   transposed: bool = False) -> torch.Tensor:
    """A Linear at K points: h [K, *lead, in] (or [*lead, in] shared), weight [K, out, in], bias [K, out] or [out].

    transposed (2D inputs): computed as a [K, out, M] product and returned as its [K, M, out] view, faster for a
    narrow head on CPU BLAS; the loss reduces over its classes as they lie (CrossEntropy.stacked_sums)."""
    k = weight.shape[0]
    lead = h.shape[1:-1] if h_stacked else h.shape[:-1]
    rows = h.reshape(k, -1, h.shape[-1]) if h_stacked else h.reshape(1, -1, h.shape[-1]).expand(k, -1, -1)
    bias_k = None if bias is None else bias.view(k if bias.dim() == 2 else 1, -1)
    if transposed and len(lead) == 1:
        columns = torch.bmm(weight, rows.transpose(1, 2)) if bias_k is None else torch.baddbmm(
            bias_k.unsqueeze(2), weight, rows.transpose(1, 2))
        return columns.transpose(1, 2)
    out = torch.bmm(rows, weight.transpose(1, 2)) if bias_k is None else torch.baddbmm(
        bias_k.unsqueeze(1), rows, weight.transpose(1, 2))
    return out.view(k, *lead, weight.shape[1])


def make_stacked(
    model: nn.Module, names: list[str], theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
    batches: EvalBatches, precision: str = "fp32", logged: list[bool] | None = None, loss: Loss = CROSS_ENTROPY,
    budget_gb: float = 1.0,
) -> StackedGraph | None:
    """A StackedGraph if fx traces the model and two points of its first batch agree with the model called at each
    point's tensors, else None (reason logged)."""
    if not isinstance(batches, list):
        return None
    try:
        ev = StackedGraph(model, names, theta, directions, batches, precision, logged, loss, budget_gb)
        probe = batches[:1]
        coords = np.zeros((2, len(directions)))
        coords[1] = [0.5 if j % 2 == 0 else -0.25 for j in range(len(directions))]
        got = ev.evaluate(coords, probe)["loss"]
        params = ev.stacked(torch.as_tensor(coords, dtype=torch.float64, device=theta[0].device))
        want = [evaluate(lambda *a, i=i, **kw: functional_call(model, {n: p[i] for n, p in params.items()}, a, kw),
                         probe, precision, loss)["loss"] for i in range(2)]
        if not np.allclose(got, want, rtol=1e-4, atol=1e-6):
            raise RuntimeError(f"stacked result {got} differs from the model's {want}")
    except Exception as err:
        log.info("stacked graph unavailable for %s (%s: %s)", type(model).__name__, type(err).__name__,
                 str(err).splitlines()[0] if str(err) else "")
        return None
    return ev

"""Graph rewrites of the in-place (K = 1) path that keep a point's numbers, to float32 rounding, and cut its cost.

- BatchNorm folding: an eval-mode BatchNorm right after a convolution becomes part of that convolution's
  weight and bias. The folded pair is recomputed only when one of its tensors changes, which happens once
  per grid point, not once per batch.
- In place: ReLU and residual adds overwrite a fresh operand instead of allocating a new activation.
- Transposed head: a final Linear with few outputs is computed as a [C, N] product (faster on CPU BLAS).
- Input-layer products: a linear or conv layer that sees only the fixed eval inputs is linear in its weight
  and bias. So for theta = theta* + sum_k c_k d_k its output is P0 + sum_k c_k P_k, where P0 uses theta* and
  P_k uses d_k. The P are computed once per eval batch, which turns a matmul per point into a few axpys.

Both are found with torch.fx. A model fx cannot trace runs as it is; the reason is logged.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import fx, nn

if TYPE_CHECKING:
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

log = logging.getLogger(__name__)

_CONV_BN = ((nn.Conv1d, nn.BatchNorm1d), (nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FRESH_MODULES = (*_LINEAR, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # outputs are new tensors
# Shape-only steps allowed between the model input and the input layer (the MLP's x.flatten(1)).
HEAD_MAX = 64  # a final Linear with at most this many outputs is computed transposed
_SHAPE_METHODS = {"flatten", "view", "reshape", "contiguous"}
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, operator.getitem}


def _versions(tensors: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(None if t is None else (id(t), t._version) for t in tensors)


class FoldedConvBN(nn.Module):
    """conv then eval-mode BatchNorm as one conv whose weight is scaled per output channel.

    It reads the live conv and BN tensors, so in-place perturbations are seen. The folded weight is cached
    on the tensors' version counters.
    """

    def __init__(self, conv: _ConvNd, bn: _BatchNorm) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the folded conv at the current values of the conv's and the BN's tensors."""
        conv, bn = self.conv, self.bn
        tensors = (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = _versions(tensors)
        if key != self._key or self._weight is None or self._bias is None:
            # running statistics are not None: _fold_batchnorm folds only a BN that has them
            scale = torch.rsqrt(cast(torch.Tensor, bn.running_var) + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -cast(torch.Tensor, bn.running_mean) * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            self._weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
            self._bias = shift
            self._key = key
        return self._weight, self._bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return self.conv._conv_forward(x, weight, bias)


class InputLayer(nn.Module):
    """A linear/conv layer fed by the fixed eval inputs only.

    On a registered batch its output is P0 + sum_k c_k P_k, from products computed on first sight of that
    batch. On any other input, or if the layer's tensors changed since set_point, the layer runs as usual.
    """

    def __init__(self, layer: nn.Linear | _ConvNd, theta: dict[str, torch.Tensor],
                 directions: list[dict[str, torch.Tensor]], budget_bytes: float) -> None:
        super().__init__()
        self.layer = layer
        self.theta = theta  # {"weight": ..., "bias": ...} at theta*
        self.directions = directions  # per direction {"weight": ..., "bias": ...} (bias only if the layer has one)
        self.budget_bytes = budget_bytes
        self.coords: tuple[float, ...] | None = None
        self._key: tuple | None = None
        self._inputs: dict[int, torch.Tensor] = {}
        self._products: dict[int, list[torch.Tensor]] = {}
        self._bytes = 0
        self.enabled = True

    def register(self, inputs: Sequence[torch.Tensor]) -> None:
        """The model inputs whose products may be cached (held here, so their ids stay theirs)."""
        self._inputs = {id(x): x for x in inputs}
        self._products.clear()
        self._bytes = 0

    def set_point(self, coords: Sequence[float]) -> None:
        """The coordinates the live tensors were just set to (after Perturber.set)."""
        self.coords = tuple(float(c) for c in coords)
        self._key = _versions((self.layer.weight, self.layer.bias))

    def _apply_layer(self, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(h, weight, bias)
        return self.layer._conv_forward(h, weight, bias)

    def _products_of(self, h: torch.Tensor, x: torch.Tensor) -> list[torch.Tensor] | None:
        key = id(x)
        if key in self._products:
            return self._products[key]
        if self._inputs.get(key) is not x or not self.enabled:
            return None
        out = [self._apply_layer(h, self.theta["weight"], self.theta.get("bias"))]
        out += [self._apply_layer(h, d["weight"], d.get("bias")) for d in self.directions]  # weight: always perturbed
        size = sum(p.numel() * p.element_size() for p in out)
        if self._bytes + size > self.budget_bytes:
            log.info("input-layer products over the memory budget (%.0f MB); layer computed per point",
                     (self._bytes + size) / 2**20)
            self.enabled = False
            self._products.clear()
            return None
        self._bytes += size
        self._products[key] = out
        return out

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        current = self.coords is not None and _versions((self.layer.weight, self.layer.bias)) == self._key
        products = self._products_of(h, x) if current else None
        if products is None or self.coords is None:
            return self.layer(h)
        out = products[0]
        first = True
        for c, p in zip(self.coords, products[1:]):
            if c != 0.0:
                out = torch.add(out, p, alpha=c) if first else out.add_(p, alpha=c)
                first = False
        return out.clone() if first else out


class TransposedHead(nn.Module):
    """The model's final linear layer computed as W h^T + b, a [C, N] product returned as its [N, C] view.

    With few outputs (C = 10 classes) the product runs about 2x faster this way on CPU BLAS. The loss's
    reductions over classes then also read contiguous memory.
    """

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 2:
            return self.layer(h)
        weight, bias = self.layer.weight, self.layer.bias
        out = torch.mm(weight, h.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, h.t())
        return out.t()


class FastModel(nn.Module):
    """The rewritten model, plus set_point and register for its input layer (if one was found)."""

    def __init__(self, graph_module: fx.GraphModule, input_layer: InputLayer | None, folded: int) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.input_layer = input_layer
        self.folded = folded

    def set_point(self, coords: Sequence[float]) -> None:
        if self.input_layer is not None:
            self.input_layer.set_point(coords)

    def register(self, inputs: Sequence[torch.Tensor]) -> None:
        if self.input_layer is not None:
            self.input_layer.register(inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x)


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    """Replace every conv -> eval BatchNorm pair (the conv's output used by the BN alone) by a FoldedConvBN."""
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn, prev = modules.get(node.target), node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
            continue
        conv = modules.get(prev.target)
        if not any(isinstance(conv, c) and type(bn) is b for c, b in _CONV_BN):
            continue
        conv, bn = cast("_ConvNd", conv), cast("_BatchNorm", bn)  # as the check above found them
        if bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        name = f"folded_{count}"
        gm.add_submodule(name, FoldedConvBN(conv, bn))
        with gm.graph.inserting_after(node):
            fused = gm.graph.call_module(name, prev.args, prev.kwargs)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        gm.graph.erase_node(prev)
        count += 1
    return count


def _fresh(node: object, modules: dict[str, nn.Module]) -> bool:
    """True if node's value is a new tensor that no other node reads (so it may be overwritten in place)."""
    if not isinstance(node, fx.Node) or len(node.users) != 1:
        return False
    if node.op == "call_module":
        return isinstance(modules.get(cast(str, node.target)), (*_FRESH_MODULES, FoldedConvBN, InputLayer))  # a name
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return not node.kwargs.get("inplace", False)
    return node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)


def _in_place(gm: fx.GraphModule) -> int:
    """ReLU and residual adds write into an operand that is a fresh, single-use tensor.

    This saves an allocation of a new activation per op; on CPUs that allocation faults in fresh pages.
    """
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        relu_module = node.op == "call_module" and type(modules.get(node.target)) is nn.ReLU
        relu_function = node.op == "call_function" and node.target in (F.relu, torch.relu)
        if (relu_module or relu_function) and len(node.args) == 1 and _fresh(node.args[0], modules):
            with gm.graph.inserting_after(node):
                new = gm.graph.call_function(torch.relu_, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            count += 1
        elif node.op == "call_function" and node.target is operator.add and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            target, other = (a, b) if _fresh(a, modules) else (b, a)
            if _fresh(target, modules) and isinstance(other, fx.Node):
                node.target, node.args = operator.iadd, (target, other)
                count += 1
    return count


def _transposed_head(gm: fx.GraphModule) -> bool:
    """Route a narrow Linear (<= HEAD_MAX outputs) whose value is the model's output to a TransposedHead."""
    modules = dict(gm.named_modules())
    output = next(n for n in gm.graph.nodes if n.op == "output")
    node = output.args[0]
    if not isinstance(node, fx.Node) or node.op != "call_module" or len(node.users) != 1:
        return False
    layer = modules.get(node.target)
    if type(layer) is not nn.Linear or layer.out_features > HEAD_MAX or len(node.args) != 1 or node.kwargs:
        return False
    gm.add_submodule("transposed_head", TransposedHead(layer))
    node.target = "transposed_head"
    return True


def _shape_only(node: object, placeholder: fx.Node) -> bool:
    """True if node is the model input, or the input through shape-only steps."""
    while isinstance(node, fx.Node) and node is not placeholder:
        shape_step = (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
            node.op == "call_function" and node.target in _SHAPE_FUNCTIONS)
        if not shape_step or any(isinstance(a, fx.Node) for a in node.args[1:]):
            return False
        node = node.args[0]
    return node is placeholder


def find_input_layer(gm: fx.GraphModule, names: list[str], theta: list[torch.Tensor],
                 directions: list[list[torch.Tensor]], budget_bytes: float) -> InputLayer | None:
    """Route the first linear/conv layer fed by the input alone (not followed by a foldable BN) to an InputLayer."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return None
    modules = dict(gm.named_modules())
    prefix = {id(m): name for name, m in modules.items()}
    index = {n: i for i, n in enumerate(names)}
    for node in gm.graph.nodes:
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, _LINEAR) or len(node.args) != 1 or node.kwargs:
            continue
        if not _shape_only(node.args[0], placeholders[0]):
            continue
        base = prefix[id(layer)]
        keys = {"weight": f"{base}.weight", "bias": f"{base}.bias"}
        if keys["weight"] not in index or (layer.bias is not None and keys["bias"] not in index):
            return None  # the layer's tensors are not all perturbed tensors: leave it alone
        th = {k: theta[index[v]] for k, v in keys.items() if v in index}
        dirs = [{k: d[index[v]] for k, v in keys.items() if v in index} for d in directions]
        module = InputLayer(layer, th, dirs, budget_bytes)
        gm.add_submodule("input_layer", module)
        with gm.graph.inserting_after(node):
            routed = gm.graph.call_module("input_layer", (node.args[0], placeholders[0]))
        node.replace_all_uses_with(routed)
        gm.graph.erase_node(node)
        return module
    return None


def rewrite(model: nn.Module, names: list[str], theta: list[torch.Tensor], directions: list[list[torch.Tensor]],
            probe: torch.Tensor, fold_batchnorm: bool = True, input_products: bool = True, in_place: bool = True,
            transposed_head: bool = True, budget_gb: float = 1.0) -> FastModel | None:
    """The model with BN folded, its input layer precomputed, ReLU/add in place and a narrow output layer
    computed transposed (each where asked and possible), checked against the model on the probe inputs.

    None (reason logged) when fx cannot trace the model, the check fails, or nothing was rewritten.
    theta are copies of the perturbed tensors at theta*.
    """
    if not (fold_batchnorm or input_products or in_place or transposed_head):
        return None
    what = type(model).__name__
    try:
        gm = fx.symbolic_trace(model)
        folded = _fold_batchnorm(gm) if fold_batchnorm else 0
        layer = find_input_layer(gm, names, theta, directions, budget_gb * 2**30) if input_products else None
        inplace = _in_place(gm) if in_place else 0
        head = _transposed_head(gm) if transposed_head else False
        if not (folded or inplace or head) and layer is None:
            return None
        gm.graph.lint()
        gm.recompile()
        fast = FastModel(gm, layer, folded).eval()
        with torch.inference_mode():
            want, got = model(probe).float(), fast(probe).float()
        if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise RuntimeError(f"rewritten model differs from the model by {(got - want).abs().max().item():.3g}")
    except Exception as err:
        log.warning("graph rewrites unavailable for %s (%s: %s); evaluating it as it is", what, type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "")
        return None
    log.info("graph rewrites of %s: %d BatchNorm(s) folded into convs, %d op(s) in place, input-layer products "
             "%s, transposed head %s", what, folded, inplace, "off" if layer is None else "on", "on" if head else "off")
    return fast

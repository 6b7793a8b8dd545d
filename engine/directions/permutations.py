"""Permutation specs for weight matching (Ainsworth et al. 2023, Git Re-Basin): which axes of which tensors of a
model's state move together when its hidden units are permuted, derived from the model's own structure.

A *group* is one set of interchangeable hidden units: a layer's outputs, a residual stream shared by every block
that adds into it, the query/key or value dims of one attention head. A *segment* says that a stretch of one axis of
one tensor is indexed by a group's units (`block` consecutive entries per unit, as a flattened conv map feeds a
Linear). Permuting a group's units and every segment of it alike leaves the function the model computes unchanged.

Specs come from a torch.fx trace (MLPs, the engine's ResNets and plain nets, torchvision ResNets and VGGs: Linear,
Conv and BatchNorm layers, elementwise activations, pooling, flatten and residual adds) or, for Hugging Face GPT-2,
from a walk over its blocks (the residual stream, each MLP's hidden units, each head's query/key and value dims).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from engine.core.errors import UserError

State = dict[str, torch.Tensor]
SUPPORTED = ("MLPs, the engine's ResNets and plain nets, torchvision ResNets and VGGs (Linear, Conv, BatchNorm, "
             "activations, pooling, flatten, residual adds) and Hugging Face GPT-2")


@dataclass(frozen=True)
class Segment:
    """A stretch of one axis indexed by a group's units: entries start + i * block + j belong to unit i."""

    group: int
    start: int = 0
    block: int = 1


@dataclass
class PermutationSpec:
    """The groups of interchangeable units (their sizes and names) and, per state tensor, the segments of each axis."""

    sizes: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    axes: dict[str, dict[int, list[Segment]]] = field(default_factory=dict)

    def add_group(self, size: int, name: str) -> int:
        """A new group of `size` units; returns its index."""
        self.sizes.append(size)
        self.names.append(name)
        return len(self.sizes) - 1

    def add(self, tensor: str, axis: int, segment: Segment) -> None:
        """Record that `segment` of `axis` of the state tensor `tensor` moves with its group."""
        self.axes.setdefault(tensor, {}).setdefault(axis, []).append(segment)


def axis_index(size: int, segments: list[Segment], spec: PermutationSpec, perms: list[torch.Tensor]) -> torch.Tensor:
    """The gather index of an axis of `size` entries under perms: new entry k = old entry index[k], where a
    segment's new unit i is its old unit perms[group][i]."""
    index = torch.arange(size)
    for s in segments:
        n = spec.sizes[s.group]
        units = perms[s.group].to(torch.long).unsqueeze(1) * s.block + torch.arange(s.block)
        index[s.start:s.start + n * s.block] = s.start + units.reshape(-1)
    return index


def permute_tensor(name: str, t: torch.Tensor, spec: PermutationSpec, perms: list[torch.Tensor],
                   skip_axis: int | None = None) -> torch.Tensor:
    """The state tensor `name` with every axis of the spec (but skip_axis) gathered by its permutation."""
    for axis, segments in spec.axes.get(name, {}).items():
        if axis != skip_axis:
            t = t.index_select(axis, axis_index(t.shape[axis], segments, spec, perms).to(t.device))
    return t


def permute_state(state: State, spec: PermutationSpec, perms: list[torch.Tensor]) -> State:
    """A copy of state with each group's units reordered by perms (unit i of the result is unit perms[g][i])."""
    return {n: permute_tensor(n, t, spec, perms) for n, t in state.items()}


def random_perms(spec: PermutationSpec, seed: int) -> list[torch.Tensor]:
    """One seeded random permutation per group (a permuted copy of a model computes the same function)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g) for n in spec.sizes]


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of model: a GPT-2 from its blocks, anything else from its torch.fx trace; refused in one
    line naming what is supported when neither applies."""
    if any(type(m).__name__ == "GPT2Model" for m in model.modules()):
        return gpt2_spec(model)
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as err:
        raise UserError(f"direction.align=weights cannot trace {type(model).__name__} with torch.fx "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}); "
                        f"supported: {SUPPORTED}") from None
    return _FxWalk(model).run(graph)


_SAME_CHANNELS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus,
                          nn.Dropout, nn.Dropout2d, nn.Identity, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                          nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                          nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d)
_SAME_CHANNELS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, torch.tanh,
                            torch.sigmoid, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                            F.adaptive_max_pool2d, torch.flatten, operator.neg}
_SAME_CHANNELS_METHODS = {"relu", "relu_", "flatten", "contiguous", "tanh", "sigmoid", "clone", "detach"}
_COMBINING = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, operator.mul, torch.mul,
              operator.truediv}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_NO_TENSOR = -2  # the value of a node that is no tensor (x.size(), x.dim())


class _FxWalk:
    """Follows each traced value's channel group through the graph; groups joined by a residual add are merged
    (union-find), and groups that reach the input or the output stay fixed."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.spec = PermutationSpec()
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.value: dict[fx.Node, int | None] = {}  # a node's channel group; None: not permutable (the input's)

    def run(self, graph: fx.Graph) -> PermutationSpec:
        """Walk every node, then keep the groups that are free to move, renumbered."""
        for node in graph.nodes:
            self.value[node] = self._step(node)
        return self._resolved()

    def _find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def _new(self, size: int, name: str) -> int:
        self.parent.append(len(self.parent))
        self.fixed.append(False)
        return self.spec.add_group(size, name)

    def _refuse(self, what: str) -> UserError:
        return UserError(f"direction.align=weights cannot permute {type(self.model).__name__}: {what}; "
                         f"supported: {SUPPORTED}")

    def _input(self, node: fx.Node) -> int | None:
        arg = node.args[0] if node.args else None
        if not isinstance(arg, fx.Node):
            raise self._refuse(f"{node.target} takes no traced tensor")
        return self.value[arg]

    def _step(self, node: fx.Node) -> int | None:
        if node.op == "placeholder":
            return None
        if node.op == "output":
            fx.node.map_arg(node.args, lambda n: self._fix(self.value[n]))
            return None
        if node.op == "call_module":
            return self._module(node, self.model.get_submodule(str(node.target)))
        if node.op == "call_function" and node.target in _SAME_CHANNELS_FUNCTIONS:
            return self._input(node)
        if node.op == "call_method" and node.target in _SAME_CHANNELS_METHODS:
            return self._input(node)
        if node.op == "call_method" and node.target in ("size", "dim"):
            return _NO_TENSOR
        if node.op == "call_function" and node.target in _COMBINING:
            return self._combine([self.value[a] for a in node.args if isinstance(a, fx.Node)])
        raise self._refuse(f"operation {getattr(node.target, '__name__', node.target)} ({node.op}) is not known to "
                           "keep channels in place")

    def _fix(self, g: int | None) -> None:
        if g is not None and g >= 0:
            self.fixed[self._find(g)] = True

    def _combine(self, groups: list[int | None]) -> int | None:
        tensors = [g for g in groups if g != _NO_TENSOR]
        free = [self._find(g) for g in tensors if g is not None]
        if not free:
            return None
        root = free[0]
        for g in free[1:]:
            if g != root:
                if self.spec.sizes[g] != self.spec.sizes[root]:
                    raise self._refuse(f"{self.spec.names[g]} and {self.spec.names[root]} are added but differ in size")
                self.parent[g] = root
                self.fixed[root] = self.fixed[root] or self.fixed[g]
        if len(free) < len(tensors):  # added to something that does not move (the input): stays in place
            self.fixed[root] = True
        return root

    def _record(self, name: str, tensor: str, axis: int, group: int | None, block: int = 1) -> None:
        if group is not None and group >= 0:
            full = f"{name}.{tensor}"
            if axis in self.spec.axes.get(full, {}):
                raise self._refuse(f"module {name} is called more than once")
            self.spec.add(full, axis, Segment(group, 0, block))

    def _module(self, node: fx.Node, m: nn.Module) -> int | None:
        name = str(node.target)
        g_in = self._input(node)
        size = None if g_in is None or g_in < 0 else self.spec.sizes[g_in]
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            fan_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            if not isinstance(m, nn.Linear) and m.groups != 1:
                raise self._refuse(f"{name} is a grouped convolution (groups={m.groups})")
            block = 1 if size is None else fan_in // size
            if size is not None and (fan_in % size or (block != 1 and not isinstance(m, nn.Linear))):
                raise self._refuse(f"{name} takes {fan_in} inputs from {size} channels")
            out = self._new(fan_out, name)
            self._record(name, "weight", 1, g_in, block)
            self._record(name, "weight", 0, out)
            if m.bias is not None:
                self._record(name, "bias", 0, out)
            return out
        if isinstance(m, _NORMS):
            if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
                raise self._refuse(f"{name} normalizes over {tuple(m.normalized_shape)}, not over channels alone")
            if size is not None:
                units = m.normalized_shape[0] if isinstance(m, nn.LayerNorm) else m.num_features
                if units != size:
                    raise self._refuse(f"{name} normalizes {units} channels, its input has {size}")
                for tensor in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, tensor, None) is not None:
                        self._record(name, tensor, 0, g_in)
            return g_in
        if isinstance(m, _SAME_CHANNELS_MODULES):
            return g_in
        raise self._refuse(f"module {name} ({type(m).__name__}) is not a supported layer")

    def _resolved(self) -> PermutationSpec:
        roots = sorted({self._find(g) for g in range(len(self.parent)) if not self.fixed[self._find(g)]})
        renumber = {g: k for k, g in enumerate(roots)}
        out = PermutationSpec([self.spec.sizes[g] for g in roots], [self.spec.names[g] for g in roots])
        for tensor, axes in self.spec.axes.items():
            for axis, segments in axes.items():
                for s in segments:
                    root = self._find(s.group)
                    if root in renumber:
                        out.add(tensor, axis, Segment(renumber[root], s.start, s.block))
        return out


def gpt2_spec(model: nn.Module) -> PermutationSpec:
    """The spec of a Hugging Face GPT-2 (any head): the residual stream (embeddings, every LayerNorm, each block's
    input and output projections, the head) is one group; each block's MLP hidden units are one; each head's
    query/key dims (permuted alike in q and k, so q.k is unchanged) and its value dims (with the output
    projection's rows) are one each."""
    prefix, core = next((p, m) for p, m in model.named_modules() if type(m).__name__ == "GPT2Model")
    p = f"{prefix}." if prefix else ""
    config = core.config
    if getattr(config, "add_cross_attention", False):
        raise UserError(f"direction.align=weights: GPT-2 with cross-attention is not supported; supported: {SUPPORTED}")
    d, heads = config.n_embd, config.n_head
    hd = d // heads
    spec = PermutationSpec()
    res = spec.add_group(d, "residual stream")
    for emb in ("wte", "wpe"):
        spec.add(f"{p}{emb}.weight", 1, Segment(res))
    for i, _ in enumerate(core.h):
        b = f"{p}h.{i}."
        for ln in ("ln_1", "ln_2"):
            spec.add(f"{b}{ln}.weight", 0, Segment(res))
            spec.add(f"{b}{ln}.bias", 0, Segment(res))
        spec.add(f"{b}attn.c_attn.weight", 0, Segment(res))  # transformers' Conv1D: weight [in, out]
        for h in range(heads):
            qk = spec.add_group(hd, f"h.{i} head {h} query/key dims")
            v = spec.add_group(hd, f"h.{i} head {h} value dims")
            for part, g in ((0, qk), (1, qk), (2, v)):
                spec.add(f"{b}attn.c_attn.weight", 1, Segment(g, part * d + h * hd))
                spec.add(f"{b}attn.c_attn.bias", 0, Segment(g, part * d + h * hd))
            spec.add(f"{b}attn.c_proj.weight", 0, Segment(v, h * hd))
        spec.add(f"{b}attn.c_proj.weight", 1, Segment(res))
        spec.add(f"{b}attn.c_proj.bias", 0, Segment(res))
        hidden = spec.add_group(core.h[i].mlp.c_fc.weight.shape[1], f"h.{i} MLP hidden units")
        spec.add(f"{b}mlp.c_fc.weight", 0, Segment(res))
        spec.add(f"{b}mlp.c_fc.weight", 1, Segment(hidden))
        spec.add(f"{b}mlp.c_fc.bias", 0, Segment(hidden))
        spec.add(f"{b}mlp.c_proj.weight", 0, Segment(hidden))
        spec.add(f"{b}mlp.c_proj.weight", 1, Segment(res))
        spec.add(f"{b}mlp.c_proj.bias", 0, Segment(res))
    spec.add(f"{p}ln_f.weight", 0, Segment(res))
    spec.add(f"{p}ln_f.bias", 0, Segment(res))
    for name, m in model.named_modules():
        if name != prefix and not name.startswith(p) and isinstance(m, nn.Linear):
            if m.in_features != d:
                raise UserError(f"direction.align=weights: the GPT-2 head {name} takes {m.in_features} inputs, not the "
                                f"residual stream's {d}; supported: {SUPPORTED}")
            spec.add(f"{name}.weight", 1, Segment(res))  # the head's outputs (tokens, labels) stay in place
    missing = sorted(set(spec.axes) - set(model.state_dict()))
    if missing:
        raise UserError(f"direction.align=weights: this GPT-2 has no {missing[0]}; supported: {SUPPORTED}")
    return spec

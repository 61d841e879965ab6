"""Where a layer's units are used: one traced forward pass, read as a data-flow graph.

Layer names say nothing reliable about structure: a residual block defines
its shortcut convolution after its main path, a head may be an
``nn.Sequential`` holding one ``nn.Linear``, and a layer may be defined and
never called. :func:`trace` runs one forward pass and records every leaf
module call and every tensor function called between them (``x + identity``,
``torch.flatten``, ``F.relu``), linked by the tensors they pass on. From
that graph:

- the *head* is the last ``nn.Linear`` on the way to the logits;
- the *penultimate* layer is the module whose output the head reads;
- the *main path* runs back from the head, taking at each sum (a residual
  add) the branch with the most convolution and linear layers behind it, so
  a shortcut's 1x1 convolution is never mistaken for the last convolution;
- a convolution's or linear layer's units are *used* at the end of the run
  of channel-wise operations that follows it (normalization, activation,
  dropout, a residual add): that is where they are measured and masked.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["CONV_LAYERS", "UNIT_LAYERS", "LayerGraph", "UnitSite", "trace"]

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNIT_LAYERS = CONV_LAYERS + (nn.Linear,)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Channel-wise modules with f(0) = 0: a zero channel stays zero through them.
_ZERO_KEEPING = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                 nn.Hardtanh, nn.Hardswish, nn.PReLU, nn.Softsign, nn.Tanhshrink, nn.Softshrink,
                 nn.Hardshrink, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.Identity)
# Channel-wise modules that move zero elsewhere.
_CHANNELWISE = _ZERO_KEEPING + _NORMS + (nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.LogSigmoid)
_PASS_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten)
_ZERO_KEEPING_FUNCS = {"relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu",
                       "gelu", "silu", "mish", "tanh", "tanh_", "hardtanh", "hardtanh_", "hardswish",
                       "dropout", "dropout1d", "dropout2d", "dropout3d", "clone", "contiguous"}
_OTHER_CHANNELWISE_FUNCS = {"sigmoid", "sigmoid_", "softplus", "hardsigmoid"}
_ADD_FUNCS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
_PASS_FUNCS = {"flatten", "view", "reshape", "squeeze", "contiguous", "clone", "dropout"}


@dataclasses.dataclass(frozen=True)
class UnitSite:
    """The units of one layer, and where they are measured and masked.

    ``layer`` is the convolution or linear layer whose output units (channels,
    neurons) are pruned; ``point`` the module at whose output they are
    measured and masked (the end of the normalization, activation and
    residual add that follow ``layer``); ``zero`` the layers whose matching
    weight and bias rows are zeroed to prune a unit for good (``layer``, the
    normalization after it, a residual shortcut's convolution and
    normalization); ``exact`` whether zeroing them makes the unit exactly 0
    at ``point`` (otherwise a pruned copy also masks ``point``'s output).
    """

    layer: str
    point: str
    zero: tuple
    exact: bool
    n_units: int


@dataclasses.dataclass
class _Node:
    index: int
    name: str | None  # leaf module name, None for a function
    module: nn.Module | None
    func: str | None  # the function's name, None for a module
    parents: list
    in_shapes: list
    shape: tuple
    depth: int  # most convolution and linear layers on a path from the input, this one included


def _tensors(obj, out):
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _tensors(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _tensors(o, out)
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, graph):
        super().__init__()
        self.graph = graph
        self.in_leaf = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.in_leaf:
            name = getattr(func, "__name__", None) or getattr(getattr(func, "__func__", None), "__name__", "?")
            self.graph._add(None, None, name, _tensors((args, kwargs or {}), []), out)
        return out


class LayerGraph:
    """The data-flow graph of one forward pass (see :func:`trace`)."""

    def __init__(self, module):
        self.module = module
        self.nodes = []
        self.calls = {}  # module name -> number of calls
        self.output_node = {}  # module name -> node producing its (last) output
        self._producer = {}
        self._keep = []

    # ------------------------------------------------------------------ recording
    def _add(self, name, module, func, inputs, out):
        outs = _tensors(out, [])
        if not outs:
            return None
        parents = []
        for t in inputs:
            p = self._producer.get(id(t))
            if p is not None and p not in parents:
                parents.append(p)
        weighted = module is not None and isinstance(module, UNIT_LAYERS)
        depth = max((self.nodes[p].depth for p in parents), default=0) + int(weighted)
        node = _Node(len(self.nodes), name, module, func, parents, [tuple(t.shape) for t in inputs],
                     tuple(outs[0].shape), depth)
        self.nodes.append(node)
        for t in outs:
            self._producer[id(t)] = node.index
        self._keep.extend(inputs)
        self._keep.extend(outs)  # ids stay unique while the trace runs
        return node.index

    def _finish(self, out):
        outs = _tensors(out, [])
        self.logits_node = self._producer.get(id(outs[0])) if outs else None
        self.consumers = {n.index: [] for n in self.nodes}
        for n in self.nodes:
            for p in n.parents:
                self.consumers[p].append(n.index)
        self._producer, self._keep = None, None

    # ------------------------------------------------------------------ queries
    def called_once(self, name):
        return self.calls.get(name, 0) == 1

    def node_of(self, name):
        """The node producing module ``name``'s output, or ``None`` if it ran zero or several times."""
        return self.output_node.get(name) if self.called_once(name) else None

    def main_parent(self, index):
        parents = self.nodes[index].parents
        if not parents:
            return None
        return max(parents, key=lambda p: self.nodes[p].depth)  # first of the deepest on ties

    def upstream(self, index, types):
        """The first module of ``types`` on the main path back from ``index`` (excluded), or ``None``."""
        index = self.main_parent(index)
        while index is not None:
            node = self.nodes[index]
            if node.module is not None and isinstance(node.module, types) and self.called_once(node.name):
                return node.name
            index = self.main_parent(index)
        return None

    @property
    def head(self):
        """Node index of the final classifier layer: the last ``nn.Linear`` on the way to the logits."""
        index = self.logits_node
        while index is not None:
            node = self.nodes[index]
            if isinstance(node.module, nn.Linear):
                return index
            index = self.main_parent(index)
        return None

    def unit_layers(self, types=UNIT_LAYERS):
        """Names of the layers of ``types`` called once, in call order, the head excluded."""
        head = self.head
        return [n.name for n in self.nodes
                if n.module is not None and isinstance(n.module, types) and n.index != head
                and self.called_once(n.name)]

    def hookable(self, index):
        """Module names whose output is node ``index``'s (leaf first, then enclosing modules)."""
        names = [n for n, i in self.output_node.items() if i == index and self.called_once(n)]
        node = self.nodes[index]
        return sorted(names, key=lambda n: (n != node.name, -n.count("."), n))

    def penultimate(self):
        """Name of the module whose output the head reads, through dropout, flatten and views."""
        head = self.head
        if head is None:
            return None
        index = self.main_parent(head)
        while index is not None:
            node = self.nodes[index]
            passing = (isinstance(node.module, _PASS_MODULES) if node.module is not None
                       else node.func in _PASS_FUNCS)
            names = self.hookable(index)
            if names and not passing:
                return names[0]
            if not passing:
                return None
            index = self.main_parent(index)
        return None

    def _channelwise(self, node, shape):
        if node.shape != shape or any(s != shape for s in node.in_shapes if len(s) == len(shape)):
            return None
        if node.module is not None:
            if isinstance(node.module, _NORMS):
                return "norm"
            if isinstance(node.module, _ZERO_KEEPING):
                return "keep"
            return "other" if isinstance(node.module, _CHANNELWISE) else None
        if node.func in _ADD_FUNCS:
            return "add"
        if node.func in _ZERO_KEEPING_FUNCS:
            return "keep"
        return "other" if node.func in _OTHER_CHANNELWISE_FUNCS else None

    def _silence(self, index, n_units, zero):
        """Zero the matching units of a side branch (a residual shortcut) by its weights, if possible."""
        if len(self.consumers[index]) != 1:
            return False  # its output is used elsewhere too: zeroing it would change that use
        node = self.nodes[index]
        if node.module is not None and self.called_once(node.name):
            if isinstance(node.module, UNIT_LAYERS) and node.shape[1:2] == (n_units,):
                zero.append(node.name)
                return True
            if isinstance(node.module, _NORMS) and node.module.affine:
                zero.append(node.name)
                return True
        kind = self._channelwise(node, node.shape)
        if kind in ("keep", "add") and node.parents:
            return all(self._silence(p, n_units, zero) for p in node.parents)
        return False

    def site(self, name):
        """The :class:`UnitSite` of the convolution or linear layer ``name`` (called once)."""
        start = self.node_of(name)
        node = self.nodes[start]
        shape = node.shape
        n_units = shape[1]
        zero, exact = [name], True
        point, point_exact = name, True
        prev = start
        while True:
            consumers = self.consumers[prev]
            if len(consumers) != 1:
                break
            nxt = self.nodes[consumers[0]]
            kind = self._channelwise(nxt, shape)
            if kind is None:
                break
            if kind == "norm":
                if nxt.module.affine:
                    zero.append(nxt.name)
                    exact = True
                else:
                    exact = False
            elif kind == "other":
                exact = False
            elif kind == "add":
                if len(nxt.in_shapes) < 2 or len(nxt.in_shapes) != len(nxt.parents):
                    exact = False  # a constant or a parameter is added: the unit is no longer 0
                side = []
                ok = all(self._silence(p, n_units, side) for p in nxt.parents if p != prev)
                zero.extend(side)
                exact = exact and ok
            names = self.hookable(nxt.index)
            passing = isinstance(nxt.module, _PASS_MODULES) or nxt.func in _PASS_FUNCS
            if names and not passing:
                point, point_exact = names[0], exact
            prev = nxt.index
        return UnitSite(layer=name, point=point, zero=tuple(dict.fromkeys(zero)), exact=point_exact,
                        n_units=n_units)


def trace(module, x):
    """Run ``module`` on the tensor batch ``x`` once and return its :class:`LayerGraph`.

    The module should be in eval mode and ``x`` on its device; gradients are
    not recorded.
    """
    graph = LayerGraph(module)
    names = {m: n for n, m in module.named_modules()}
    stack = []
    recorder = _Recorder(graph)

    def pre(mod, args, kwargs):
        if not any(True for _ in mod.children()):
            recorder.in_leaf += 1
            stack.append(_tensors((args, kwargs), []))

    def post(mod, args, kwargs, out):
        name = names[mod]
        graph.calls[name] = graph.calls.get(name, 0) + 1
        if not any(True for _ in mod.children()):
            recorder.in_leaf -= 1
            graph.output_node[name] = graph._add(name, mod, None, stack.pop(), out)
        else:
            outs = _tensors(out, [])
            graph.output_node[name] = graph._producer.get(id(outs[0])) if outs else None

    handles = []
    for mod in names:
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(mod.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.no_grad(), recorder:
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    graph.calls.pop("", None)
    graph.output_node.pop("", None)
    graph._finish(out)
    return graph

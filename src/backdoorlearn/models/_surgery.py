"""Unit surgery: ranking, masking and pruning the units of one layer.

A *unit* is an output channel of a convolution or an output neuron of a
linear layer. It is measured and masked where its output is used: after the
normalization, activation and residual add that follow the layer (a
:class:`~backdoorlearn.models._structure.UnitSite`, found by tracing one
forward pass). Pruned units are removed by zeroing their weights and bias
(and those of the normalization after them, and of a residual shortcut), so
the architecture and the ``state_dict`` keys are unchanged and a saved,
reloaded or pickled model stays pruned; :class:`UnitMask` keeps them at zero
while skorch trains the network further. Pruning defenses
(:class:`~backdoorlearn.FinePruner`, :class:`~backdoorlearn.NeuronPruner`) and
the pruning-aware attack share these helpers.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from skorch.callbacks import Callback
from torch import nn

from ._structure import CONV_LAYERS, UNIT_LAYERS, UnitSite

__all__ = ["OutputMask", "UnitMask", "masked_units", "resolve_layer", "unit_activations", "unit_site",
           "zero_units"]


def resolve_layer(adapter, layer, *, types=CONV_LAYERS, what="convolution (nn.Conv2d)", X_sample=None):
    """The layer name to prune: ``layer`` checked, or the model's last convolution."""
    name = adapter.default_conv_layer(X_sample) if layer is None else layer
    adapter.get_layer(name, types=types, what=what, param="layer")
    return name


def unit_site(adapter, X_sample, layer, *, types=UNIT_LAYERS, what="convolution or linear layer",
              param="layer", graph=None):
    """The :class:`UnitSite` of ``layer`` (a name), traced on ``X_sample``.

    ``layer`` must name a module of ``types`` that the forward pass calls
    once and that is not the final classifier layer; the errors list the
    names that qualify.
    """
    graph = adapter.layer_graph(X_sample) if graph is None else graph
    valid = graph.unit_layers(types)
    listing = ", ".join(valid) or "(none)"
    module = adapter.get_layer(layer, param=param)
    if not isinstance(module, types):
        raise ValueError(f"{param}={layer!r} must name a {what}; it is a {type(module).__name__}. "
                         f"Layers that qualify: {listing}.")
    if layer not in valid:
        why = ("it is the final classifier layer (its units are the classes)" if graph.node_of(layer) is not None
               else f"the forward pass calls it {graph.calls.get(layer, 0)} times, not once")
        raise ValueError(f"{param}={layer!r} cannot be pruned: {why}. Layers that qualify: {listing}.")
    return graph.site(layer)


def _point(site_or_layer):
    return site_or_layer.point if isinstance(site_or_layer, UnitSite) else site_or_layer


def unit_activations(adapter, X, site):
    """Per-sample activation of each unit, shape ``(n_samples, n_units)``.

    Measured at ``site.point`` for a :class:`UnitSite` (where the units'
    output is used), at the named layer's output for a name. The positive
    part (what a ReLU passes on; a no-op after one), averaged over the
    spatial positions of a convolution's feature map.
    """
    acts = adapter.activations(X, _point(site))
    acts = np.maximum(acts, 0)
    if acts.ndim > 2:
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1).mean(axis=2)
    return acts


class OutputMask:
    """A forward hook zeroing some channels of a module's output (picklable, unlike a closure)."""

    def __init__(self, units):
        self.units = [int(u) for u in units]

    def __call__(self, _module, _inputs, out):
        if not self.units:
            return out
        out = out.clone()
        out[:, torch.as_tensor(self.units, device=out.device)] = 0
        return out


@contextlib.contextmanager
def masked_units(adapter, site, units):
    """Zero ``units`` on the adapter's runtime module for a block, where they are used.

    ``site`` is a :class:`UnitSite` (masked at ``site.point``) or a layer
    name (masked at its output). Evaluates a pruning candidate without
    copying weights; for an exact site the result equals zeroing the
    ``site.zero`` rows.
    """
    target = dict(adapter.runtime_module.named_modules())[_point(site)]
    handle = target.register_forward_hook(OutputMask(np.asarray(units, dtype=np.int64).tolist()))
    try:
        yield
    finally:
        handle.remove()


def _layers(layer):
    return [layer] if isinstance(layer, str) else list(layer)


def zero_units(module, layer, units):
    """Prune ``units`` of ``layer`` in ``module`` in place: zero their weights and bias.

    Parameters
    ----------
    module : nn.Module
        The network (modified in place).
    layer : str or sequence of str
        Name of a convolution or linear layer of ``module``, or the names of
        the layers whose matching rows are zeroed together (a
        :class:`UnitSite`'s ``zero``: the layer, the normalization after it,
        a residual shortcut).
    units : array-like of int
        Output channels (convolution, normalization) or neurons (linear
        layer) to prune.

    Returns
    -------
    module : nn.Module
        The same module.
    """
    modules = dict(module.named_modules())
    idx = torch.as_tensor(np.asarray(units, dtype=np.int64))
    if idx.numel() == 0:
        return module
    with torch.no_grad():
        for name in _layers(layer):
            target = modules[name]
            for p in (getattr(target, "weight", None), getattr(target, "bias", None)):
                if p is not None:
                    p[idx.to(p.device)] = 0
    return module


class UnitMask(Callback):
    """A skorch callback keeping the pruned units of a layer at zero during training.

    The gradients of the pruned rows are zeroed before each optimizer step and
    the rows themselves re-zeroed after it (robust to weight decay and
    momentum), so training cannot revive a pruned unit. A repaired net keeps
    the callback, so a later ``partial_fit`` keeps the pruning too.

    Parameters
    ----------
    layer : str or list of str
        Name of the pruned layer in the net's module, or the names of the
        layers whose matching rows are zeroed together (the layer, the
        normalization after it, a residual shortcut's convolution and
        normalization).
    units : list of int
        Its pruned output channels or neurons.

    See Also
    --------
    backdoorlearn.FinePruner : Prunes channels and fine-tunes with this callback.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.models import SmallCNN, UnitMask, build_net
    >>> net = build_net(SmallCNN(1, 3), classes=range(3), max_epochs=1,
    ...                 callbacks=[("prune_mask", UnitMask("conv2", [0, 5]))])
    >>> X = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    >>> net = net.fit(X, np.arange(12) % 3)
    >>> float(net.module_.conv2.weight[[0, 5]].abs().sum())
    0.0
    """

    def __init__(self, layer, units):
        self.layer = layer
        self.units = units

    def _targets(self, net):
        modules = dict(net.module_.named_modules())
        return [modules[name] for name in _layers(self.layer)]

    def on_train_begin(self, net, **kwargs):
        """Zero the pruned units before training starts.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        zero_units(net.module_, self.layer, self.units)

    def on_grad_computed(self, net, named_parameters, **kwargs):
        """Zero the gradients of the pruned rows before the optimizer step.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        named_parameters : iterator
            The parameters of the step, as skorch passes them (unused: the
            layer is looked up by name).
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        if not len(self.units):
            return
        idx = list(self.units)
        for target in self._targets(net):
            for p in (getattr(target, "weight", None), getattr(target, "bias", None)):
                if p is not None and p.grad is not None:
                    p.grad[idx] = 0

    def on_batch_end(self, net, training=False, **kwargs):
        """Re-zero the pruned rows after a training step.

        Parameters
        ----------
        net : skorch.NeuralNet
            The net being trained.
        training : bool, default=False
            Whether the batch was a training batch.
        **kwargs : dict
            Ignored (skorch's callback interface).
        """
        if training:
            zero_units(net.module_, self.layer, self.units)

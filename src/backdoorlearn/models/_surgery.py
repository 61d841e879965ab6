"""Unit surgery: ranking, masking and pruning the units of one layer.

A *unit* is an output channel of a convolution or an output neuron of a
linear layer. Pruned units are removed by zeroing their weights and bias, so
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

__all__ = ["UnitMask", "masked_units", "resolve_layer", "unit_activations", "zero_units"]

CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNIT_LAYERS = CONV_LAYERS + (nn.Linear,)


def resolve_layer(adapter, layer, *, types=CONV_LAYERS, what="convolution (nn.Conv2d)"):
    """The layer name to prune: ``layer`` checked, or the model's last convolution."""
    name = adapter.default_conv_layer() if layer is None else layer
    adapter.get_layer(name, types=types, what=what, param="layer")
    return name


def unit_activations(adapter, X, layer):
    """Per-sample activation of each unit of ``layer``, shape ``(n_samples, n_units)``.

    The positive part of the layer's output (what the following ReLU passes
    on), averaged over the spatial positions of a convolution's feature map.
    """
    acts = adapter.activations(X, layer)
    acts = np.maximum(acts, 0)
    if acts.ndim > 2:
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1).mean(axis=2)
    return acts


@contextlib.contextmanager
def masked_units(adapter, layer, units):
    """Zero the outputs of ``units`` of ``layer`` on the adapter's runtime module for a block.

    Evaluates a pruning candidate without copying weights; the result equals
    zeroing the units' weights and bias.
    """
    units = np.asarray(units, dtype=np.int64)
    target = dict(adapter.runtime_module.named_modules())[layer]

    def hook(_module, _inputs, out):
        if len(units) == 0:
            return out
        out = out.clone()
        out[:, torch.as_tensor(units, device=out.device)] = 0
        return out

    handle = target.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def zero_units(module, layer, units):
    """Prune ``units`` of ``layer`` in ``module`` in place: zero their weights and bias.

    Parameters
    ----------
    module : nn.Module
        The network (modified in place).
    layer : str
        Name of a convolution or linear layer of ``module``.
    units : array-like of int
        Output channels (convolution) or neurons (linear layer) to prune.

    Returns
    -------
    module : nn.Module
        The same module.
    """
    target = dict(module.named_modules())[layer]
    idx = torch.as_tensor(np.asarray(units, dtype=np.int64))
    if idx.numel() == 0:
        return module
    with torch.no_grad():
        target.weight[idx.to(target.weight.device)] = 0
        if target.bias is not None:
            target.bias[idx.to(target.bias.device)] = 0
    return module


class UnitMask(Callback):
    """A skorch callback keeping the pruned units of a layer at zero during training.

    The gradients of the pruned rows are zeroed before each optimizer step and
    the rows themselves re-zeroed after it (robust to weight decay and
    momentum), so training cannot revive a pruned unit. A repaired net keeps
    the callback, so a later ``partial_fit`` keeps the pruning too.

    Parameters
    ----------
    layer : str
        Name of the pruned layer in the net's module.
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

    def _target(self, net):
        return dict(net.module_.named_modules())[self.layer]

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
        target = self._target(net)
        idx = list(self.units)
        for p in (target.weight, target.bias):
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

"""Plumbing shared by the repairs: model and data checks, unit masks, fine-tuning.

A repair works on a deep copy of the user's module and hands back a fitted
skorch ``NeuralNetClassifier``. Pruned units (convolution channels or linear
neurons) are removed by zeroing their weights and bias, so the architecture
and the ``state_dict`` keys are unchanged and a saved, reloaded or pickled
model stays pruned; :class:`UnitMask` keeps them at zero while skorch
fine-tunes the network (and during any later ``partial_fit``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from skorch.callbacks import Callback
from torch import nn

from .._utils import check_images, check_labels, seeded
from ..models import ModelAdapter, build_net

__all__ = ["UnitMask", "zero_units"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_UNITS = _CONV + (nn.Linear,)


def prepare(model, X, y, *, defense, device, batch_size, y_required=True):
    """White-box adapter on the user's model, checked images and labels, classes."""
    adapter = ModelAdapter(model, defense=defense, device=device, batch_size=batch_size)
    adapter.require_white_box()
    X = check_images(X, name="X", caller=defense)
    classes = adapter.classes_
    n_classes = len(classes) if classes is not None else adapter.n_classes(X[:1])
    if classes is None:
        classes = np.arange(n_classes)
    if y is None and not y_required:
        return adapter, X, None, classes
    y = check_labels(y, n_samples=len(X), n_classes=n_classes, caller=defense)
    return adapter, X, y, classes


def resolve_layer(adapter, layer, *, types=_CONV, what="convolution (nn.Conv2d)"):
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
    """Zero the outputs of ``units`` of ``layer`` on the adapter's runtime module.

    Used to evaluate a pruning candidate without copying weights; the result
    equals zeroing the units' weights and bias.
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
    layer : str
        Name of a convolution or linear layer of ``module``.
    units : array-like of int
        Output channels (convolution) or neurons (linear layer) to prune.
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
    momentum), so fine-tuning cannot revive a pruned channel. The callback
    stays on the repaired net: a later ``partial_fit`` keeps the pruning too.

    Parameters
    ----------
    layer : str
        Name of the pruned layer in the net's module.
    units : list of int
        Its pruned output channels or neurons.
    """

    def __init__(self, layer, units):
        self.layer = layer
        self.units = units

    def _target(self, net):
        return dict(net.module_.named_modules())[self.layer]

    def on_train_begin(self, net, **kwargs):
        zero_units(net.module_, self.layer, self.units)

    def on_grad_computed(self, net, named_parameters, **kwargs):
        if not len(self.units):
            return
        target = self._target(net)
        idx = list(self.units)
        for p in (target.weight, target.bias):
            if p is not None and p.grad is not None:
                p.grad[idx] = 0

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            zero_units(net.module_, self.layer, self.units)


class ShiftOrNoise:
    """Collate a fine-tuning batch and augment each image: a small shift or Gaussian noise.

    Each image is, with probability ``noise_prob``, perturbed by Gaussian
    noise of standard deviation ``noise_std``; otherwise it is translated by
    up to ``max_shift`` pixels along each axis (zero fill). Draws come from
    torch's global generator, which :func:`fine_tune` seeds, so runs repeat.
    Used as a skorch ``iterator_train__collate_fn`` (training batches only).

    Parameters
    ----------
    max_shift : int
        Largest translation in pixels (0: none).
    noise_std : float
        Standard deviation of the noise (0: none).
    noise_prob : float in [0, 1]
        Probability that an image gets noise instead of a shift.
    """

    def __init__(self, max_shift=1, noise_std=0.0, noise_prob=0.5):
        self.max_shift = max_shift
        self.noise_std = noise_std
        self.noise_prob = noise_prob

    def __call__(self, batch):
        from torch.utils.data import default_collate

        X, y = default_collate(batch)
        if X.ndim != 4:
            return X, y
        n, _, h, w = X.shape
        out = X
        s = int(self.max_shift)
        if s > 0:
            padded = nn.functional.pad(X, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (n,)).tolist()
            dx = torch.randint(0, 2 * s + 1, (n,)).tolist()
            out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if self.noise_std > 0 and self.noise_prob > 0:
            noisy = (torch.rand(n) < self.noise_prob).view(n, 1, 1, 1)
            out = torch.where(noisy, X + self.noise_std * torch.randn_like(X), out)
        return out, y


def fine_tune(module, X, y, classes, *, epochs, lr, batch_size, device, seed, verbose,
              callbacks=None, desc="fine-tuning", weight_decay=0.0, lr_schedule="constant",
              label_smoothing=0.0, augment=None):
    """Wrap ``module`` in a skorch net and train it ``epochs`` epochs (0: no training).

    The module is trained in place (it is already the repair's own copy).
    ``lr_schedule="cosine"`` anneals the AdamW learning rate from ``lr`` to 0
    over the epochs; ``label_smoothing`` is that of the cross-entropy;
    ``augment`` is a collate function for the training batches (e.g.
    :class:`ShiftOrNoise`). These three only shape this fine-tuning: the
    returned net carries none of them (a later ``partial_fit`` is plain AdamW
    at ``lr`` on the data as given), only ``callbacks``.
    """
    from skorch.callbacks import LRScheduler

    from ..models._progress import EpochProgressBar

    cbs = list(callbacks or [])
    train_only = []
    if verbose:
        cbs.append(("progress", EpochProgressBar(desc=desc)))
    if lr_schedule == "cosine" and epochs > 0:
        train_only.append(("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=int(epochs))))
    extra = {}
    if label_smoothing:
        extra["criterion__label_smoothing"] = float(label_smoothing)
    if augment is not None:
        extra["iterator_train__collate_fn"] = augment
    with seeded(seed):
        net = build_net(module, classes=classes, max_epochs=max(int(epochs), 1), lr=lr,
                        batch_size=batch_size, device=device, callbacks=(cbs + train_only) or None,
                        optimizer=torch.optim.AdamW, optimizer__weight_decay=weight_decay, **extra)
        net.initialize()
        if epochs > 0:
            net.partial_fit(X, y)
    if train_only or extra:
        # Hand back a plain net: drop the schedule, the augmentation and the smoothing,
        # and restore the learning rate the schedule annealed.
        # (Set directly: skorch's set_params re-initializes callbacks_ from the old
        # list, and raises on an initialized net when only iterator parameters change.)
        net.callbacks = cbs or None
        net.initialize_callbacks()
        if augment is not None:
            net.iterator_train__collate_fn = None  # DataLoader's default collate
        if label_smoothing:
            net.set_params(criterion__label_smoothing=0.0)  # re-initializes criterion and optimizer
        net.set_params(lr=lr)
    return net

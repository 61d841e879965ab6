"""The pruning-aware attack (Liu et al., Fine-Pruning, RAID 2018): an adaptive attack on pruning."""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_images, check_label_value, check_labels, seeded, torch_seed
from ..models import ModelAdapter, SmallCNN, build_net
from ..models._surgery import UnitMask, resolve_layer, unit_activations, zero_units
from ..triggers import Trigger
from ._badnets import BackdoorPoisoner

__all__ = ["PruningAwareAttack"]


@fill_doc
class PruningAwareAttack(BaseEstimator):
    """Train a backdoored network that survives pruning: the four-step pruning-aware attack.

    Liu et al. (2018, §4) show that pruning alone is defeated by an attacker
    who knows it will be applied:

    1. train the network on clean data;
    2. prune the channels of a layer (by default the last convolution) that
       are dormant on clean data;
    3. retrain the pruned network on poisoned data, so the backdoor is
       learned by the channels that clean inputs *do* activate;
    4. reinstate the pruned channels with their clean weights and biases,
       as decoys: a defender's pruning removes them first and leaves the
       backdoor in place. Their biases are lowered just enough to keep them
       dormant on the poisoned training set, triggered inputs included
       (otherwise their clean features partly mask the backdoor on a small
       network).

    Fine-tuning after pruning (:class:`~backdoorlearn.FinePruner`) still
    removes it, which is the paper's argument for fine-pruning.

    Parameters
    ----------
    trigger : Trigger
        The backdoor trigger.
    target_label : int, default=0
        The class triggered inputs are sent to.
    poison_rate : float in (0, 1], default=0.1
        Fraction of the training set poisoned in step 3
        (:class:`~backdoorlearn.BackdoorPoisoner`).
    prune_ratio : float in (0, 1), default=0.7
        Fraction of the layer's channels pruned in step 2, lowest mean
        clean activation first (the attack's design parameter).
    layer : str, default=None
        The convolution pruned; ``None`` is the last ``nn.Conv2d``.
    module : nn.Module, default=None
        The network architecture; a copy is re-initialized (``reset_parameters``
        of each layer, seeded by ``random_state``) and trained. ``None`` builds
        a :class:`~backdoorlearn.models.SmallCNN` for the data's shape.
    clean_epochs, poison_epochs : int, default=20
        Training epochs of steps 1 and 3.
    lr : float, default=2e-3
        Adam learning rate of both trainings.
    train_batch_size : int, default=64
        Mini-batch size of both trainings.
    {device}
    {random_state}
    {verbose}

    Attributes
    ----------
    backdoored_model_ : skorch.NeuralNetClassifier
        The de-pruned backdoored network (step 4), fitted.
    clean_model_ : skorch.NeuralNetClassifier
        The clean network of step 1.
    layer_ : str
    pruned_units_ : ndarray of int
        The decoy channels pruned in step 2 and reinstated in step 4.
    poisoner_ : BackdoorPoisoner
        The poisoner of step 3 (``poisoner_.poison_mask_`` marks the rows).
    n_classes_ : int

    See Also
    --------
    BackdoorPoisoner : The plain (BadNets) poisoning attack.
    FinePruner : The defense this attack was designed against.

    References
    ----------
    .. [1] K. Liu, B. Dolan-Gavitt, S. Garg, "Fine-Pruning: Defending Against
       Backdooring Attacks on Deep Neural Networks", RAID 2018, §4.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import PruningAwareAttack, Trigger
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((60, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(60) % 3
    >>> attack = PruningAwareAttack(Trigger.patch((1, 8, 8), size=2), prune_ratio=0.5,
    ...                             clean_epochs=1, poison_epochs=1, random_state=0)
    >>> attack.fit(X, y).pruned_units_.shape
    (16,)
    >>> attack.backdoored_model_.predict(X[:4]).shape
    (4,)
    """

    _parameter_constraints = {
        "trigger": [Trigger],
        "target_label": [Interval(numbers.Integral, 0, None, closed="left")],
        "poison_rate": [Interval(numbers.Real, 0, 1, closed="right")],
        "prune_ratio": [Interval(numbers.Real, 0, 1, closed="neither")],
        "layer": [str, None],
        "module": [nn.Module, None],
        "clean_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "poison_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "train_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, trigger, target_label=0, poison_rate=0.1, prune_ratio=0.7, layer=None, module=None,
                 clean_epochs=20, poison_epochs=20, lr=2e-3, train_batch_size=64, device=None,
                 random_state=None, verbose=0):
        self.trigger = trigger
        self.target_label = target_label
        self.poison_rate = poison_rate
        self.prune_ratio = prune_ratio
        self.layer = layer
        self.module = module
        self.clean_epochs = clean_epochs
        self.poison_epochs = poison_epochs
        self.lr = lr
        self.train_batch_size = train_batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X, y):
        """Run the four steps on the clean training set ``X``, ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Clean training images.
        y : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        self : PruningAwareAttack
            The fitted attack.
        """
        self._validate_params()
        name = type(self).__name__
        X = check_images(X, name="X", caller=name)
        y = check_labels(y, n_samples=len(X), caller=name)
        rng = check_random_state(self.random_state)
        n_classes = int(y.max()) + 1
        if self.module is not None:
            out = ModelAdapter(self.module).n_classes(X[:1])
            n_classes = max(n_classes, out)
        target = check_label_value(self.target_label, n_classes, name="target_label", caller=name)
        classes = np.arange(n_classes)

        def net_for(module, epochs, desc, callbacks=()):
            return build_net(module, classes=classes, max_epochs=epochs, lr=self.lr,
                             batch_size=self.train_batch_size, device=self.device, callbacks=list(callbacks),
                             verbose=self.verbose, desc=desc)

        # Step 1: a clean network.
        with seeded(torch_seed(rng)):
            if self.module is not None:
                # Trained from scratch: re-initialized under random_state, so the run
                # does not depend on the global torch RNG the module was built with.
                module = copy.deepcopy(self.module)
                for sub in module.modules():
                    if callable(getattr(sub, "reset_parameters", None)):
                        sub.reset_parameters()
            else:
                module = SmallCNN(in_channels=X.shape[1], n_classes=n_classes)
            clean = net_for(module, self.clean_epochs, "clean training")
            clean.fit(X, y)
        adapter = ModelAdapter(clean, defense=name)
        layer = resolve_layer(adapter, self.layer, X_sample=X)

        # Step 2: prune the channels dormant on clean data (lowest mean activation).
        scores = unit_activations(adapter, X, layer).mean(axis=0)
        n_prune = max(1, int(np.floor(self.prune_ratio * len(scores))))
        pruned = np.argsort(scores, kind="stable")[:n_prune]
        module = copy.deepcopy(clean.module_)
        target_layer = dict(module.named_modules())[layer]
        saved_w = target_layer.weight.detach()[pruned].clone()
        saved_b = None if target_layer.bias is None else target_layer.bias.detach()[pruned].clone()
        zero_units(module, layer, pruned)

        # Step 3: retrain the pruned network on poisoned data (pruned channels held at 0).
        poisoner = BackdoorPoisoner(self.trigger, target_label=target, poison_rate=self.poison_rate,
                                    n_classes=n_classes, random_state=rng)
        X_p, y_p = poisoner.fit_resample(X, y)
        with seeded(torch_seed(rng)):
            net = net_for(module, self.poison_epochs, "poisoned retraining",
                          [("prune_mask", UnitMask(layer, [int(c) for c in pruned]))])
            net.initialize()
            net.partial_fit(X_p, y_p)

        # Step 4: reinstate the pruned channels with their weights and biases.
        idx = torch.as_tensor(pruned)
        with torch.no_grad():
            live = dict(net.module_.named_modules())[layer]
            live.weight[idx] = saved_w.to(live.weight.device)
            if saved_b is not None:
                live.bias[idx] = saved_b.to(live.bias.device)
        net.set_params(callbacks=None)
        if live.bias is not None:
            # The decoys must stay dormant, on triggered inputs too, or their clean
            # features mask the backdoor: lower each reinstated channel's bias below
            # its largest output on the poisoned training set.
            store = ModelAdapter(net, defense=name).activations(X_p, layer)
            peak = store[:, pruned].reshape(len(store), len(pruned), -1).max(axis=(0, 2))
            with torch.no_grad():
                shift = torch.as_tensor(np.maximum(peak, 0) + 1e-3, dtype=live.bias.dtype)
                live.bias[idx] -= shift.to(live.bias.device)

        self.clean_model_ = clean
        self.backdoored_model_ = net
        if hasattr(net, "_images"):  # an ImageClassifierNet: takes what fit took, refuses other sizes
            net.input_shape_ = tuple(X.shape[1:])
        self.layer_ = layer
        self.pruned_units_ = pruned
        self.poisoner_ = poisoner
        self.n_classes_ = n_classes
        return self

    def predict(self, X):
        """Predict with the backdoored network.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            What ``backdoored_model_.predict`` returns.
        """
        check_is_fitted(self, "backdoored_model_")
        return self.backdoored_model_.predict(check_images(X, name="X", caller=type(self).__name__))

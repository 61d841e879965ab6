"""Neuron pruning (Neural Cleanse §VI-B): prune what the reversed trigger excites."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import Interval

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_label_value
from ..models._surgery import UNIT_LAYERS, unit_activations, unit_site
from ..triggers import resolve_triggers
from ._base import BaseRepair, PruningSearch

__all__ = ["NeuronPruner"]


@fill_doc
class NeuronPruner(BaseRepair):
    """Prune the neurons a reversed trigger excites, until the trigger stops working.

    Neural Cleanse's first patch (Wang et al., 2019, §VI-B): each unit of a
    layer (a convolution's channel or a linear layer's neuron) is ranked by
    the gap between its mean activation on clean inputs and on the same
    inputs carrying the reversed trigger; units are pruned (output set to 0)
    highest gap first, and pruning stops at the fewest units for which the
    reversed trigger's attack success on the defender's data falls below
    ``attack_success_threshold``. No fine-tuning: the cost is a few forward
    passes.

    White box. It needs a small clean, labelled data set and the trigger(s),
    e.g. from a fitted :class:`~backdoorlearn.NeuralCleanse`.

    Parameters
    ----------
    {triggers}
    layer : str, default=None
        Convolution or linear layer to prune (any one the forward pass calls
        once, by its dotted name, except the final classifier layer; the
        error lists those that qualify). ``None`` picks the second to last
        layer, as the paper does (§VI-B): the convolution or linear layer
        nearest the final classifier layer on the main path of one traced
        forward pass (``fc1`` of a :class:`~backdoorlearn.models.SmallCNN`,
        the hidden layer of a VGG-style head, the last block's second
        convolution of a residual net whose head reads the global pooling).
        Its units are measured and masked where their output is used, after
        the normalization, activation and residual add that follow it
        (``activation_layer_``). The paper prunes the last convolution of
        its face models.
    target_label : int, default=None
        Target of a trigger given without one. ``None`` takes the label the
        trigger sends most stamped inputs of ``X`` to.
    attack_success_threshold : float in (0, 1], default=0.05
        Pruning stops once every trigger's attack success on the stamped
        ``X`` is below it. The paper prunes until the model no longer
        responds to the reversed trigger; 5% stands for "no longer".
    max_prune_ratio : float in (0, 1), default=0.8
        At most this fraction of the layer's units is pruned, so that a
        trigger the layer cannot silence does not prune it away; a warning
        says when the threshold was not reached within it.
    {batch_size}
    {device}
    {verbose}

    Attributes
    ----------
    repaired_model_ : skorch.NeuralNetClassifier
        The pruned copy of the model (the user's model is unchanged).
    layer_ : str
        The pruned layer.
    activation_layer_ : str
        The module at whose output the units are measured and masked.
    activation_gap_ : ndarray of shape (n_units,)
        Mean activation with the trigger minus without it (the largest over
        the triggers).
    unit_order_ : ndarray of shape (n_units,)
        Units in pruning order (highest gap first).
    pruned_units_ : ndarray of int
        The pruned channels or neurons, highest gap first.
    prune_ratio_ : float
        Fraction of the layer's units pruned.
    target_labels_ : list of int
        The target label of each trigger.
    accuracy_before_ : float
        Clean accuracy on ``X`` before pruning.
    accuracy_pruned_ : float
        Clean accuracy on ``X`` after pruning.
    {repair_checks}
    attack_success_pruned_ : float
        The triggers' (largest) attack success on the stamped ``X`` after pruning.
    input_shape_ : tuple of int
        ``(C, H, W)`` of the images seen at fit.
    pruning_curve_ : Bunch
        Evaluated points: ``prune_ratio``, ``n_pruned``, ``clean_accuracy``
        and ``attack_success`` (of the reversed trigger, on ``X``).

    See Also
    --------
    NeuralCleanse : Finds the triggers.
    Unlearner : The paper's other, usually stronger, patch.
    FinePruner : Pruning that needs no trigger.

    Notes
    -----
    Units are pruned by zeroing their weights and bias, and those of the
    normalization after them and of a residual shortcut, so a pruned unit
    is exactly zero where it is used (the architecture and the
    ``state_dict`` keys are unchanged); see :class:`FinePruner`'s Notes. Deviation from the paper, which
    prunes in steps until the trigger stops working: the smallest sufficient
    number of units is found by bisection, assuming attack success does not
    increase with pruning (the paper's curves, Fig. 9); the result is the
    same under that assumption, for about ``log2(n_units)`` evaluations.

    References
    ----------
    .. [1] B. Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor
       Attacks in Neural Networks", IEEE S&P 2019, §VI-B.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import NeuronPruner, SmallCNN, Trigger
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(40) % 10
    >>> trigger = Trigger.patch((1, 8, 8), size=2)
    >>> pruner = NeuronPruner({0: trigger}, max_prune_ratio=0.5)
    >>> pruner.fit(SmallCNN(1, 10), X, y).layer_
    'fc1'
    >>> pruner.activation_layer_
    'penultimate'
    """

    _parameter_constraints = {
        "triggers": "no_validation",
        "layer": [str, None],
        "target_label": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "attack_success_threshold": [Interval(numbers.Real, 0, 1, closed="right")],
        "max_prune_ratio": [Interval(numbers.Real, 0, 1, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "verbose": ["verbose"],
    }

    def __init__(self, triggers, layer=None, target_label=None, attack_success_threshold=0.05,
                 max_prune_ratio=0.8, batch_size=256, device=None, verbose=0):
        self.triggers = triggers
        self.layer = layer
        self.target_label = target_label
        self.attack_success_threshold = attack_success_threshold
        self.max_prune_ratio = max_prune_ratio
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def _repair(self, adapter, X, y, classes):
        name = type(self).__name__
        pairs = resolve_triggers(self.triggers, caller=name, image_shape=X.shape[1:])
        if not pairs:
            raise ValueError(f"{name} needs at least one trigger; the NeuralCleanse given flagged no label.")
        work = adapter.copy()
        n_classes = len(classes)
        graph = work.layer_graph(X)
        layer = self._default_layer(work, graph) if self.layer is None else self.layer
        site = unit_site(work, X, layer, types=UNIT_LAYERS, what="convolution or linear layer", graph=graph)

        attack_sets = []
        for trigger, label in pairs:
            X_stamped = trigger.apply(X)
            if label is None and self.target_label is not None:
                label = check_label_value(self.target_label, n_classes, name="target_label", caller=name)
            if label is None:
                label = int(np.bincount(work.predict(X_stamped), minlength=n_classes).argmax())
            keep = y != label
            if not keep.any():
                raise ValueError(f"{name}: every label of y is the target {label}; attack success needs others.")
            attack_sets.append((X_stamped[keep], y[keep], label))

        # §VI-B: rank units by the activation gap between triggered and clean inputs.
        clean = unit_activations(work, X, site).mean(axis=0)
        gaps = np.max([unit_activations(work, X_s, site).mean(axis=0) - clean for X_s, _, _ in attack_sets],
                      axis=0)
        order = np.argsort(-gaps, kind="stable")
        n_units = len(order)
        search = PruningSearch(work, site, order, X, y, attack_sets=attack_sets)

        n_max = max(1, int(np.floor(self.max_prune_ratio * n_units)))
        k = search.smallest(n_max, lambda _acc, asr: asr < self.attack_success_threshold)
        if k is None:
            warnings.warn(
                f"{name}: the triggers' attack success on X is still {search(n_max)[1]:.1%} after "
                f"pruning {n_max} of {n_units} units of {layer!r} (max_prune_ratio="
                f"{self.max_prune_ratio}); stopping there. Try another layer.",
                UserWarning, stacklevel=4)
            k = n_max

        module, mask = search.pruned_copy(k)
        net = work.to_net(module, classes=classes, callbacks=[mask])
        self._record_pruning(search, k)
        self.activation_gap_ = gaps
        self.target_labels_ = [int(t) for _, _, t in attack_sets]
        return net

    @staticmethod
    def _default_layer(adapter, graph):
        # §VI-B targets the second to last layer: the convolution or linear layer
        # whose units make the penultimate representation, the one nearest the
        # final classifier layer on the main path (its weights can be zeroed).
        name = None if graph.head is None else graph.upstream(graph.head, UNIT_LAYERS)
        if name is None:
            raise ValueError(f"{adapter.defense} found no convolution or linear layer feeding the final "
                             "classifier layer of this model; pass layer=.")
        return name

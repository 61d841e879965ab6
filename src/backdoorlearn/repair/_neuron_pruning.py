"""Neuron pruning (Neural Cleanse §VI-B): prune what the reversed trigger excites."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_label_value
from ..models._surgery import UNIT_LAYERS, unit_activations, unit_site
from ._base import NO_TRIGGER, BaseRepair, PruningSearch

__all__ = ["NeuronPruner"]

#: Layers tried with ``layer=None``: the unit layers nearest the final classifier layer on the main path.
_N_CANDIDATES = 3


@fill_doc
class NeuronPruner(BaseRepair):
    """Prune the neurons a reversed trigger excites, until the trigger stops working.

    Neural Cleanse's first patch (Wang et al., 2019, §VI-B): each unit of a
    layer (a convolution's channel or a linear layer's neuron) is ranked by
    the gap between its mean activation on clean inputs and on the same
    inputs carrying the reversed trigger; units are pruned (output set to 0)
    highest gap first, and pruning stops at the fewest units for which the
    reversed trigger's attack success on the defender's data falls below
    ``attack_success_threshold``, or earlier if the clean accuracy on that
    data would fall more than ``max_accuracy_drop`` (then with a warning).
    No fine-tuning: the cost is a few forward passes per layer tried.

    White box. It needs a small clean, labelled data set and the trigger(s),
    e.g. from a fitted :class:`~backdoorlearn.NeuralCleanse`.

    Parameters
    ----------
    {triggers}
    layer : str, default=None
        Convolution or linear layer to prune (any one the forward pass calls
        once, by its dotted name, except the final classifier layer; the
        error lists those that qualify). ``None`` tries the three such
        layers nearest the final classifier layer on the main path of one
        traced forward pass (the paper's "second to last layer", §VI-B, and
        the two before it: ``fc1``, ``conv2`` and ``conv1`` of a
        :class:`~backdoorlearn.models.SmallCNN`; the last block's
        convolutions of a residual net) and keeps the one where pruning the
        reversed trigger's units disables it within the budget at the best
        clean accuracy on ``X`` (``layer_candidates_`` holds the outcome of
        each). A deviation from the paper, which prunes one fixed layer: on
        some architectures the reversed trigger's units do not separate
        from the clean ones at the penultimate layer, and pruning there
        costs far more accuracy than a layer before it. Units are measured
        and masked where their output is used, after the normalization,
        activation and residual add that follow the layer
        (``activation_layer_``).
    target_label : int, default=None
        Target of a trigger given without one. ``None`` takes the label the
        trigger sends most stamped inputs of ``X`` to.
    attack_success_threshold : float in (0, 1], default=0.05
        Pruning stops once every trigger's attack success on the stamped
        ``X`` is below it. The paper prunes until the model no longer
        responds to the reversed trigger; 5% stands for "no longer".
    max_prune_ratio : float in (0, 1), default=0.8
        At most this fraction of the layer's units is pruned, so that a
        trigger the layer cannot silence does not prune it away.
    max_accuracy_drop : float in [0, 1], default=0.05
        The clean-accuracy budget: pruning stops before the clean accuracy
        on ``X`` falls more than this below the unpruned model's, as
        :class:`FinePruner` stops. Not in the paper, which prunes until the
        trigger stops working whatever it costs; when the budget (or
        ``max_prune_ratio``) stops the pruning first, a warning says so and
        ``budget_reached_`` is True.
    {batch_size}
    {device}
    {no_trigger_warn}
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
    layer_candidates_ : Bunch or None
        The layers tried: ``layer``, ``n_pruned``, ``clean_accuracy`` and
        ``attack_success`` on ``X`` where each one's search stopped, and
        ``disabled`` (whether the triggers fell below
        ``attack_success_threshold`` within the budget there).
    budget_reached_ : bool
        Whether the budget stopped the pruning before the triggers stopped
        working on the stamped ``X``.
    n_triggers_ : int
        Number of triggers (0 when a NeuralCleanse flagged none; see
        ``no_trigger``).
    fallback_ : FinePruner or None
        The repair that ran instead, with ``no_trigger="fine-prune"``.
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
    >>> pruner = NeuronPruner({0: trigger}, max_prune_ratio=0.5, max_accuracy_drop=1.0)
    >>> pruner.fit(SmallCNN(1, 10), X, y).layer_candidates_.layer
    ['fc1', 'conv2', 'conv1']
    >>> NeuronPruner({0: trigger}, layer="fc1").fit(SmallCNN(1, 10), X, y).activation_layer_
    'penultimate'
    """

    _parameter_constraints = {
        "triggers": "no_validation",
        "layer": [str, None],
        "target_label": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "attack_success_threshold": [Interval(numbers.Real, 0, 1, closed="right")],
        "max_prune_ratio": [Interval(numbers.Real, 0, 1, closed="neither")],
        "max_accuracy_drop": [Interval(numbers.Real, 0, 1, closed="both")],
        "no_trigger": [NO_TRIGGER],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "verbose": ["verbose"],
    }

    def __init__(self, triggers, layer=None, target_label=None, attack_success_threshold=0.05,
                 max_prune_ratio=0.8, max_accuracy_drop=0.05, batch_size=256, device=None, no_trigger="warn",
                 verbose=0):
        self.triggers = triggers
        self.layer = layer
        self.target_label = target_label
        self.attack_success_threshold = attack_success_threshold
        self.max_prune_ratio = max_prune_ratio
        self.max_accuracy_drop = max_accuracy_drop
        self.no_trigger = no_trigger
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def _repair(self, adapter, X, y, classes):
        name = type(self).__name__
        pairs, fallback = self._resolve_or_fallback(adapter, X, y, classes)
        if fallback is not None:
            self._record_nothing()
            return fallback
        work = adapter.copy()
        n_classes = len(classes)
        graph = work.layer_graph(X)

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

        names = self._candidate_layers(work, graph) if self.layer is None else [self.layer]
        results = [self._search_layer(work, graph, layer, X, y, attack_sets) for layer in names]
        best = min(range(len(results)), key=lambda i: results[i]["rank"])
        chosen = results[best]
        search, k = chosen["search"], chosen["k"]
        self.layer_candidates_ = Bunch(
            layer=list(names),
            n_pruned=np.array([r["k"] for r in results]),
            clean_accuracy=np.array([r["search"](r["k"])[0] for r in results]),
            attack_success=np.array([r["search"](r["k"])[1] for r in results]),
            disabled=np.array([r["disabled"] for r in results]),
        )
        self.budget_reached_ = not chosen["disabled"]
        if self.budget_reached_:
            acc, asr = search(k)
            why = ("max_prune_ratio" if chosen["limit"] == "ratio" else
                   f"max_accuracy_drop={self.max_accuracy_drop:g} (clean accuracy on X "
                   f"{search(0)[0]:.3f} -> {acc:.3f})")
            tried = "" if len(names) == 1 else f" (the best of the layers tried: {', '.join(names)})"
            warnings.warn(
                f"{name}: the triggers' attack success on X is still {asr:.1%} after pruning {k} of "
                f"{len(search.order)} units of {chosen['layer']!r}{tried}: {why} stopped the pruning before "
                f"the trigger stopped working (attack_success_threshold={self.attack_success_threshold:g}). "
                "Unlearner or FinePruner may do better.",
                UserWarning, stacklevel=4)

        module, mask = search.pruned_copy(k)
        net = work.to_net(module, classes=classes, callbacks=[mask])
        self._record_pruning(search, k)
        self.activation_gap_ = chosen["gaps"]
        self.target_labels_ = [int(t) for _, _, t in attack_sets]
        return net

    def _record_nothing(self):
        self.layer_ = self.activation_layer_ = None
        self.layer_candidates_ = None
        self.activation_gap_ = self.unit_order_ = self.pruned_units_ = np.array([], dtype=int)
        self.prune_ratio_ = 0.0
        self.accuracy_pruned_ = self.attack_success_pruned_ = None
        self.pruning_curve_ = None
        self.budget_reached_ = False
        self.target_labels_ = []

    def _search_layer(self, work, graph, layer, X, y, attack_sets):
        """Rank ``layer``'s units by the activation gap and find how many to prune (§VI-B)."""
        site = unit_site(work, X, layer, types=UNIT_LAYERS, what="convolution or linear layer", graph=graph)
        clean = unit_activations(work, X, site).mean(axis=0)
        gaps = np.max([unit_activations(work, X_s, site).mean(axis=0) - clean for X_s, _, _ in attack_sets],
                      axis=0)
        order = np.argsort(-gaps, kind="stable")
        n_units = len(order)
        search = PruningSearch(work, site, order, X, y, attack_sets=attack_sets)
        n_ratio = max(1, int(np.floor(self.max_prune_ratio * n_units)))
        base_acc, _ = search(0)
        floor = base_acc - self.max_accuracy_drop - 1e-12
        n_budget = search.largest(n_ratio, lambda acc, _asr: acc >= floor)
        k = search.smallest(n_budget, lambda _acc, asr: asr < self.attack_success_threshold)
        disabled = k is not None
        limit = None
        if not disabled:
            k, limit = n_budget, "ratio" if n_budget == n_ratio else "accuracy"
        acc, asr = search(k)
        # Layer choice: one that disables the triggers within the budget, at the best clean accuracy (then
        # the fewest units); else the one leaving the lowest attack success.
        rank = (0, -acc, k / n_units) if disabled else (1, asr, -acc)
        return dict(layer=layer, search=search, k=k, gaps=gaps, disabled=disabled, limit=limit, rank=rank)

    @staticmethod
    def _candidate_layers(adapter, graph):
        # §VI-B targets the second to last layer; the layer where the reversed trigger's units stand out
        # differs between architectures, so the last convolution or linear layers of the main path feeding
        # the final classifier layer are tried, nearest first.
        names = []
        index = graph.head
        while index is not None and len(names) < _N_CANDIDATES:
            name = graph.upstream(index, UNIT_LAYERS)
            if name is None:
                break
            names.append(name)
            index = graph.node_of(name)
        if not names:
            raise ValueError(f"{adapter.defense} found no convolution or linear layer feeding the final "
                             "classifier layer of this model; pass layer=.")
        return names

"""Neuron pruning (Neural Cleanse §VI-B): prune what the reversed trigger excites."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .._docstring import fill_doc
from .._utils import check_images, check_label_value
from ..metrics import attack_success_rate, clean_accuracy
from ..models._surgery import UNIT_LAYERS, UnitMask, masked_units, resolve_layer, unit_activations, zero_units
from ..triggers import resolve_triggers
from ._base import prepare

__all__ = ["NeuronPruner"]


def _bisect_smallest(n_max, ok):
    """Smallest ``k`` in ``[0, n_max]`` with ``ok(k)`` (monotone), or ``None``."""
    if ok(0):
        return 0
    if not ok(n_max):
        return None
    lo, hi = 0, n_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


@fill_doc
class NeuronPruner(BaseEstimator):
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
    triggers : Trigger, list of Trigger, dict or fitted NeuralCleanse
        The (reversed) triggers. A ``NeuralCleanse`` gives its flagged
        labels' triggers and their targets; a dict maps target labels to
        triggers.
    layer : str, default=None
        Convolution or linear layer to prune. ``None`` picks the second to
        last layer, the paper's default (§VI-B): the penultimate layer, or the
        last convolution or linear layer feeding it (``fc1`` of a
        :class:`~backdoorlearn.models.SmallCNN`). The paper found the last
        convolution better on its large face models; on small networks the
        penultimate neurons separate the backdoor better.
    target_label : int, default=None
        Target of a trigger given without one. ``None`` takes the label the
        trigger sends most stamped inputs of ``X`` to.
    attack_success_threshold : float in (0, 1], default=0.05
        Pruning stops once every trigger's attack success on the stamped
        ``X`` is below it.
    max_prune_ratio : float in (0, 1), default=0.8
        At most this fraction of the layer's units is pruned; a warning says
        when the threshold was not reached within it.
    {batch_size}
    {device}
    {verbose}

    Attributes
    ----------
    repaired_model_ : skorch.NeuralNetClassifier
        The pruned copy of the model (the user's model is unchanged).
    layer_ : str
    activation_gap_ : ndarray of shape (n_units,)
        Mean activation with the trigger minus without it (the largest over
        the triggers).
    pruned_units_ : ndarray of int
        The pruned channels or neurons, highest gap first.
    prune_ratio_ : float
        Fraction of the layer's units pruned.
    target_labels_ : list of int
    reversed_attack_success_ : float
        The triggers' (largest) attack success on the stamped ``X`` after pruning.
    accuracy_before_, accuracy_after_ : float
        Clean accuracy on ``X`` before and after pruning.
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
    Units are pruned by zeroing their weights and bias (the architecture and
    the ``state_dict`` keys are unchanged). The smallest sufficient number of
    units is found by bisection, assuming attack success does not increase
    with pruning (the paper's curves, Fig. 9).

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
    """

    _parameter_constraints = {
        "triggers": "no_validation",
        "layer": [str, None],
        "target_label": [Interval(numbers.Integral, 0, None, closed="left"), None],
        "attack_success_threshold": [Interval(numbers.Real, 0, 1, closed="right")],
        "max_prune_ratio": [Interval(numbers.Real, 0, 1, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": [str],
        "verbose": ["verbose"],
    }

    def __init__(self, triggers, layer=None, target_label=None, attack_success_threshold=0.05,
                 max_prune_ratio=0.8, batch_size=256, device="cpu", verbose=0):
        self.triggers = triggers
        self.layer = layer
        self.target_label = target_label
        self.attack_success_threshold = attack_success_threshold
        self.max_prune_ratio = max_prune_ratio
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose

    def fit(self, model, X, y):
        """Prune a copy of ``model`` until the triggers no longer work on ``X``.

        Parameters
        ----------
        model : torch.nn.Module or skorch.NeuralNetClassifier
            The backdoored classifier; never modified.
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The defender's clean images.
        y : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        self : NeuronPruner
        """
        self._validate_params()
        name = type(self).__name__
        adapter, X, y, classes = prepare(model, X, y, defense=name, device=self.device,
                                         batch_size=self.batch_size)
        layer = self.layer
        if layer is None:
            # §VI-B targets the second to last layer: the penultimate representation,
            # or the last convolution / linear layer feeding it (whose weights can be zeroed).
            names = list(adapter.named_layers())
            pen = adapter.default_penultimate_layer()
            weighted = [n for n in names[: names.index(pen) + 1]
                        if isinstance(adapter.named_layers()[n], UNIT_LAYERS)]
            if not weighted:
                raise ValueError(f"{name} found no convolution or linear layer before {pen!r}; pass layer=.")
            layer = weighted[-1]
        layer = resolve_layer(adapter, layer, types=UNIT_LAYERS,
                              what="convolution or linear layer")
        pairs = resolve_triggers(self.triggers, caller=name, image_shape=X.shape[1:])
        if not pairs:
            raise ValueError(f"{name} needs at least one trigger; the NeuralCleanse given flagged no label.")
        work = adapter.copy()
        n_classes = len(classes)

        stamped, targets = [], []
        for trigger, label in pairs:
            Xs = trigger.apply(X)
            if label is None and self.target_label is not None:
                label = check_label_value(self.target_label, n_classes, name="target_label", caller=name)
            if label is None:
                label = int(np.bincount(work.predict(Xs), minlength=n_classes).argmax())
            keep = y != label
            if not keep.any():
                raise ValueError(f"{name}: every label of y is the target {label}; attack success needs others.")
            stamped.append((Xs[keep], y[keep]))
            targets.append(label)

        # §VI-B: rank units by the activation gap between triggered and clean inputs.
        clean = unit_activations(work, X, layer).mean(axis=0)
        gaps = np.max([unit_activations(work, Xs, layer).mean(axis=0) - clean for Xs, _ in stamped], axis=0)
        order = np.argsort(-gaps, kind="stable")
        n_units = len(order)

        points = {}

        def evaluate(k):
            if k not in points:
                with masked_units(work, layer, order[:k]):
                    acc = clean_accuracy(y, work.predict(X))
                    asr = max(attack_success_rate(ys, work.predict(Xs), t)
                              for (Xs, ys), t in zip(stamped, targets))
                points[k] = (acc, asr)
            return points[k]

        n_max = max(1, int(np.floor(self.max_prune_ratio * n_units)))
        k = _bisect_smallest(n_max, lambda k: evaluate(k)[1] < self.attack_success_threshold)
        if k is None:
            warnings.warn(
                f"{name}: the triggers' attack success on X is still {evaluate(n_max)[1]:.1%} after "
                f"pruning {n_max} of {n_units} units of {layer!r} (max_prune_ratio="
                f"{self.max_prune_ratio}); stopping there. Try another layer.",
                UserWarning, stacklevel=2)
            k = n_max
        evaluate(0)

        pruned = order[:k]
        module = work.module_copy()
        zero_units(module, layer, pruned)
        net = work.to_net(module, classes=classes,
                          callbacks=[("prune_mask", UnitMask(layer, [int(u) for u in pruned]))])

        ks = sorted(points)
        self.layer_ = layer
        self.activation_gap_ = gaps
        self.pruned_units_ = pruned
        self.prune_ratio_ = k / n_units
        self.target_labels_ = targets
        self.reversed_attack_success_ = points[k][1]
        self.accuracy_before_ = points[0][0]
        self.accuracy_after_ = points[k][0]
        self.pruning_curve_ = Bunch(
            prune_ratio=np.array([j / n_units for j in ks]),
            n_pruned=np.array(ks),
            clean_accuracy=np.array([points[j][0] for j in ks]),
            attack_success=np.array([points[j][1] for j in ks]),
        )
        self.repaired_model_ = net
        return self

    def predict(self, X):
        """Predictions of the repaired model (a convenience for ``repaired_model_.predict``)."""
        check_is_fitted(self, "repaired_model_")
        return self.repaired_model_.predict(check_images(X, name="X", caller=type(self).__name__))

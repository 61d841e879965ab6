"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune dormant channels, fine-tune."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_images, check_label_value, check_labels, torch_seed
from torch import nn

from ..models._structure import CONV_LAYERS
from ..models._surgery import unit_activations, unit_site
from ..models._training import fine_tune
from ._base import FINE_TUNE_RECIPE_CONSTRAINTS, BaseRepair, PruningSearch

__all__ = ["FinePruner"]


def _check_monitor(X_triggered, y_triggered, target_label, *, image_shape, n_classes, caller):
    """Validate the optional triggered monitoring data (all three or none)."""
    given = [v is not None for v in (X_triggered, y_triggered, target_label)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError(
            f"{caller}.fit monitors attack success only with X_triggered, y_triggered (their true "
            f"labels) and target_label together; got X_triggered={'set' if given[0] else None}, "
            f"y_triggered={'set' if given[1] else None}, target_label={target_label!r}."
        )
    Xt = check_images(X_triggered, name="X_triggered", caller=caller, image_shape=image_shape)
    yt = check_labels(y_triggered, n_samples=len(Xt), n_classes=n_classes, name="y_triggered", caller=caller)
    target = check_label_value(target_label, n_classes, name="target_label", caller=caller)
    if not (yt != target).any():
        raise ValueError(f"y_triggered in {caller} must hold some labels other than target_label={target}.")
    return Xt, yt, target


@fill_doc
class FinePruner(BaseRepair):
    """Fine-Pruning: prune the channels dormant on clean data, then fine-tune.

    Backdoor behaviour tends to live in neurons that clean inputs leave
    dormant (Liu et al., 2018, §3). Fine-Pruning ranks the channels of a
    convolution (by default the last one) by their mean activation on the
    defender's clean data, prunes them lowest first as far as the clean
    accuracy stays within ``max_accuracy_drop`` of the original, and then
    fine-tunes the pruned network on the same clean data.
    Pruning removes the backdoor's dormant neurons; fine-tuning restores
    clean accuracy and overwrites what a pruning-aware attacker hid in the
    active ones.

    White box: the model must be a torch module or a skorch net. It needs a
    small clean, labelled data set (the papers use 10% of the training set
    or less) and no knowledge of the trigger.

    Parameters
    ----------
    layer : str, default=None
        Name of the convolution whose output channels are pruned (any
        convolution the forward pass calls once, by its dotted name, e.g.
        ``"layer3.conv2"`` or ``"features.7"``); for a model with no
        convolution, a hidden ``nn.Linear`` whose neurons are pruned. ``None``
        picks the last convolution of the main path feeding the classifier,
        the paper's choice (§3: the last convolutional layer encodes the
        backdoor most sparsely), found from one traced forward pass (see
        Notes); without a convolution, the last hidden ``nn.Linear`` before
        the final classifier layer. A module that declares
        ``last_conv_name`` (:class:`~backdoorlearn.models.SmallCNN`) is taken
        at its word.
    criterion : {"activation", "weight"}, default="activation"
        ``"activation"``: prune in increasing order of mean (positive)
        activation on ``X``, the paper's pruning defense. ``"weight"``:
        magnitude pruning, channel by channel on the mean absolute filter
        weight, with the threshold ``min + (max - min) * prune_ratio``
        (channels at or below it are pruned).
    prune_ratio : float in [0, 1) or None, default=None
        Fixed amount of pruning: the fraction of channels (``"activation"``)
        or the threshold ratio (``"weight"``). ``None`` searches the largest
        amount that keeps the clean accuracy on ``X`` within
        ``max_accuracy_drop`` of the unpruned model's, by bisection (the
        paper sweeps the ratio; the bisection evaluates about
        ``log2(n_channels)`` amounts).
    max_accuracy_drop : float in [0, 1], default=0.04
        Clean accuracy (a rate) that pruning may cost before fine-tuning:
        the paper stops pruning at a 4% drop.
    fine_tune_epochs : int, default=120
        Epochs of fine-tuning on ``X``, ``y`` after pruning; ``0`` is pruning
        alone. A few hundred images make an epoch a handful of steps, hence
        many epochs.
    lr : float, default=1e-2
        Initial learning rate of the fine-tuning (AdamW). Larger than a
        training run's last rate on purpose: a gentle fine-tuning on a few
        hundred clean images leaves a BadNets backdoor in place (Neural
        Cleanse §VI-C reports the same of clean fine-tuning).
    {fine_tune_recipe}
    {validation_fraction}
    {train_batch_size}
    {batch_size}
    {device}
    {random_state}
    {verbose}

    Attributes
    ----------
    repaired_model_ : skorch.NeuralNetClassifier
        The pruned and fine-tuned network (a deep copy: the user's model is
        unchanged). Pruned channels have zero weights and bias, kept at zero
        by a :class:`~backdoorlearn.models.UnitMask` callback if it is
        trained further (plain AdamW at ``lr``: the schedule, the label
        smoothing and the augmentation of the fine-tuning are not kept).
    layer_ : str
        The pruned layer.
    activation_layer_ : str
        The module at whose output the channels are measured and masked:
        the end of the normalization, activation and residual add that
        follow ``layer_``.
    unit_scores_ : ndarray of shape (n_units,)
        Mean activation at ``activation_layer_`` (or mean absolute weight)
        of each channel.
    unit_order_ : ndarray of shape (n_units,)
        Channels in pruning order (lowest score first).
    pruned_units_ : ndarray of int
        The pruned channels, in pruning order.
    prune_ratio_ : float
        Fraction of the layer's channels pruned.
    weight_threshold_ : float or None
        The weight criterion's threshold (``None`` for ``"activation"``).
    accuracy_before_ : float
        Clean accuracy on ``X`` of the unpruned model.
    accuracy_pruned_ : float
        Clean accuracy on ``X`` after pruning, before fine-tuning.
    {lr_search}
    {repair_checks}
    attack_success_pruned_ : float or None
        Attack success on the monitoring data after pruning, before
        fine-tuning (``None`` without monitoring data).
    input_shape_ : tuple of int
        ``(C, H, W)`` of the images seen at fit.
    pruning_curve_ : Bunch
        The pruning amounts evaluated (the bisection's steps, sorted):
        ``prune_ratio`` (fraction of channels), ``n_pruned``,
        ``clean_accuracy`` (on ``X``) and ``attack_success`` (on the
        monitoring data, ``None`` without it). Plot it with
        :class:`~backdoorlearn.plotting.PruningCurveDisplay`.

    See Also
    --------
    NeuronPruner : Prune the neurons a reversed trigger excites (Neural Cleanse).
    Unlearner : Fine-tune with a reversed trigger stamped on clean data.
    PruningAwareAttack : The adaptive attack that defeats pruning alone.

    Notes
    -----
    Layers are found by structure, not by name order: one forward pass of a
    clean image is traced, and the last convolution is the first one met
    walking back from the final ``nn.Linear`` along the main path, where at
    a residual sum the branch with more layers behind it is taken (so a
    shortcut's 1x1 convolution, defined after the main path in a
    ``BasicBlock``, is never the one pruned). A channel is measured where
    its output is used: after the batch normalization, the activation and,
    in a residual block, the add with the shortcut and the ReLU after it
    (the block's output, which the next block or the global pooling reads).
    The paper ranks the last convolutional layer's channels by their mean
    activation on clean data (Liu et al., 2018, §3); with batch
    normalization between the convolution and its ReLU, the convolution's
    own output says nothing of that activation (a negative scale silences a
    channel whose convolution output is large), and at the block output
    masking a channel is exact: what the rest of the network reads from it
    is zero.

    Pruned channels are removed by zeroing weights and biases, not by
    deleting channels: those of the convolution, of the batch normalization
    after it, and of a residual shortcut's convolution and normalization,
    so the channel is exactly zero where it is used. The architecture and
    the ``state_dict`` keys are unchanged and a saved or pickled repaired
    model stays pruned. Where weights cannot silence it (a residual block
    whose shortcut is the identity: the channel carries the block's input),
    the repaired module also carries a forward hook masking the block's
    output; that hook survives pickling and copying, not a ``state_dict``
    loaded into a fresh module.

    The accuracy that guides pruning is measured on the defender's data
    ``X`` itself: the unpruned model never trained on it, so before
    fine-tuning it is an unbiased estimate, and with a few hundred images
    keeping all of them for fine-tuning matters more than a separate split.
    After fine-tuning, accuracy on ``X`` says little (the model fits it);
    the learning-rate check (``validation_fraction``) holds images out
    instead. It exists for models the large rate wrecks: on a
    fully-connected network over 32x32 colour images, where every weight's
    first Adam step of about ``lr`` adds up over 3072 inputs, fine-tuning
    at ``lr=1e-2`` lost 8 to 12 points of the development zoo's test
    accuracy, and the check lowered the rate there; every convolutional
    entry kept ``lr`` (``benchmarks/bench_lr_check.py``,
    ``benchmarks/results/lr_check_dev.txt``).
    The bisection assumes clean accuracy does not increase with pruning, as
    on the paper's curves (Fig. 4); activations are computed once.

    Deviations from the paper, which fine-tunes the pruned network with
    plain SGD: the fine-tuning here is AdamW with a cosine schedule, label
    smoothing, weight decay and shift-or-noise augmentation, chosen on
    clean accuracy and attack success on the embedded benchmarks (nothing
    in it uses a trigger or the target label). ``fine_tune_epochs=30,
    lr_schedule="constant", label_smoothing=0, max_shift=0, noise_std=0,
    weight_decay=0`` is the paper's plain fine-tuning with AdamW in place
    of SGD. The learning-rate check (``validation_fraction``) is also this
    library's; ``validation_fraction=0`` leaves it out. ``benchmarks/bench_repairs.py`` measures both
    (``benchmarks/results/repairs.txt``).

    References
    ----------
    .. [1] K. Liu, B. Dolan-Gavitt, S. Garg, "Fine-Pruning: Defending Against
       Backdooring Attacks on Deep Neural Networks", RAID 2018.
    .. [2] C. M. Bishop, "Training with Noise is Equivalent to Tikhonov
       Regularization", Neural Computation 7(1), 1995.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import FinePruner, SmallCNN
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(40) % 10
    >>> pruner = FinePruner(prune_ratio=0.25, fine_tune_epochs=1, random_state=0)
    >>> pruner.fit(SmallCNN(1, 10), X, y).pruned_units_.shape
    (8,)
    >>> pruner.repaired_model_.predict(X).shape
    (40,)

    On a residual network the main path's last convolution is pruned,
    measured at its block's output:

    >>> from backdoorlearn.models import ResidualCNN
    >>> res = FinePruner(prune_ratio=0.5, fine_tune_epochs=0).fit(ResidualCNN(1, 10, widths=(4, 8)), X, y)
    >>> res.layer_, res.activation_layer_
    ('layer2.conv2', 'layer2.relu2')
    """

    _parameter_constraints = {
        "layer": [str, None],
        "criterion": [StrOptions({"activation", "weight"})],
        "prune_ratio": [Interval(numbers.Real, 0, 1, closed="left"), None],
        "max_accuracy_drop": [Interval(numbers.Real, 0, 1, closed="both")],
        "fine_tune_epochs": [Interval(numbers.Integral, 0, None, closed="left")],
        "lr": [Interval(numbers.Real, 0, None, closed="neither")],
        **FINE_TUNE_RECIPE_CONSTRAINTS,
        "validation_fraction": [Interval(numbers.Real, 0, 0.5, closed="both")],
        "train_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(self, layer=None, criterion="activation", prune_ratio=None, max_accuracy_drop=0.04,
                 fine_tune_epochs=120, lr=1e-2, lr_schedule="cosine", label_smoothing=0.1, max_shift=1,
                 noise_std=0.3, noise_prob=0.5, weight_decay=0.2, validation_fraction=0.2, train_batch_size=16,
                 batch_size=256, device=None, random_state=None, verbose=0):
        self.layer = layer
        self.criterion = criterion
        self.prune_ratio = prune_ratio
        self.max_accuracy_drop = max_accuracy_drop
        self.fine_tune_epochs = fine_tune_epochs
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.label_smoothing = label_smoothing
        self.max_shift = max_shift
        self.noise_std = noise_std
        self.noise_prob = noise_prob
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.train_batch_size = train_batch_size
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ ranking
    def _site(self, adapter, X):
        """The pruned layer: ``layer``, or the last convolution of the main path (a hidden Linear without one)."""
        graph = adapter.layer_graph(X)
        if graph.unit_layers(CONV_LAYERS):
            types, what = CONV_LAYERS, "convolution"
            name = adapter.default_conv_layer(X) if self.layer is None else self.layer
        else:
            types, what = nn.Linear, "linear layer (the model has no convolution)"
            name = self.layer
            if name is None:
                name = None if graph.head is None else graph.upstream(graph.head, nn.Linear)
                if name is None:
                    raise ValueError(f"{type(self).__name__} found no convolution and no hidden linear layer "
                                     "feeding the final classifier layer of this model; pass layer=.")
        return unit_site(adapter, X, name, types=types, what=what, graph=graph)

    def _scores(self, adapter, X, site):
        if self.criterion == "activation":
            # §3 of the paper: mean activation of each channel over the clean data,
            # measured where the channel's output is used (after normalization and activation).
            return unit_activations(adapter, X, site).mean(axis=0)
        weight = dict(adapter.runtime_module.named_modules())[site.layer].weight.detach().cpu().numpy()
        return np.abs(weight.reshape(weight.shape[0], -1)).mean(axis=1)

    def _n_for_ratio(self, ratio, scores):
        n = len(scores)
        if self.criterion == "activation":
            return min(int(np.floor(ratio * n + 1e-9)), n - 1)
        if ratio == 0:
            return 0
        lo, hi = scores.min(), scores.max()
        threshold = lo + (hi - lo) * ratio
        return min(int((scores <= threshold).sum()), n - 1)

    def _weight_ratio(self, k, sorted_scores):
        """The smallest threshold ratio that prunes the ``k`` lowest channels."""
        if k == 0:
            return 0.0
        lo, hi = sorted_scores[0], sorted_scores[-1]
        return float((sorted_scores[k - 1] - lo) / (hi - lo)) if hi > lo else 0.0

    # ------------------------------------------------------------------ fit
    def fit(self, model, X, y, X_triggered=None, y_triggered=None, target_label=None):
        """Prune and fine-tune a copy of ``model`` on the clean data ``X``, ``y``.

        Parameters
        ----------
        model : torch.nn.Module or skorch.NeuralNetClassifier
            The (possibly backdoored) classifier; never modified.
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The defender's clean images.
        y : array-like of shape (n_samples,)
            Their labels.
        X_triggered : array-like of shape (n_triggered, C, H, W), default=None
            Optional triggered images, to record attack success along the
            pruning curve (monitoring only: it never guides the repair).
        y_triggered : array-like of shape (n_triggered,), default=None
            True labels of ``X_triggered``.
        target_label : int, default=None
            The attack's target label.

        Returns
        -------
        self : FinePruner
            The fitted repair.
        """
        return self._fit(model, X, y, monitor=(X_triggered, y_triggered, target_label))

    def _repair(self, adapter, X, y, classes, *, monitor):
        name = type(self).__name__
        monitor = _check_monitor(*monitor, image_shape=X.shape[1:], n_classes=len(classes), caller=name)
        rng = check_random_state(self.random_state)
        work = adapter.copy()  # all evaluation hooks go on a copy: the user's module is untouched
        site = self._site(work, X)

        scores = self._scores(work, X, site)
        order = np.argsort(scores, kind="stable")
        n_units = len(scores)
        search = PruningSearch(work, site, order, X, y, attack_sets=[] if monitor is None else [monitor])
        base_acc, _ = search(0)
        if self.prune_ratio is None:
            # Prune as far as clean accuracy allows (the paper stops at a 4% drop),
            # by bisection over the number of channels rather than a sweep.
            budget = base_acc - self.max_accuracy_drop - 1e-12
            k = search.largest(n_units - 1, lambda acc, _asr: acc >= budget)
        else:
            k = self._n_for_ratio(self.prune_ratio, scores)

        recipe = self._fine_tune_recipe()

        def train(rows, lr, seed, verbose):
            module, mask = search.pruned_copy(k)
            return fine_tune(module, X[rows], y[rows], classes, epochs=self.fine_tune_epochs, lr=lr,
                             batch_size=self.train_batch_size, device=work.device, seed=seed,
                             verbose=verbose, callbacks=[mask], desc="fine-pruning", **recipe)

        net = self._checked_fine_tune(train, work.predict, X, y, seed=torch_seed(rng))

        self._record_pruning(search, k)
        self.unit_scores_ = scores
        self.weight_threshold_ = None
        if self.criterion == "weight":
            s = scores[order]
            ratio = self._weight_ratio(k, s) if self.prune_ratio is None else self.prune_ratio
            self.weight_threshold_ = float(s[0] + (s[-1] - s[0]) * ratio)
        return net

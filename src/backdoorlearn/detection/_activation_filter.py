"""Neural Cleanse's input filter (Sec. VI-A): flag inputs that fire the trigger's neurons."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, check_images
from ..models import ModelAdapter
from ..triggers import Trigger, resolve_triggers
from ._base import BaseDetector

__all__ = ["ActivationFilter"]


@fill_doc
class ActivationFilter(BaseDetector):
    """Flag inputs whose top backdoor neurons fire as on the reversed trigger.

    Neural Cleanse's filter (Wang et al., 2019, Sec. VI-A): the neurons of a
    layer (by default the penultimate one, the paper's "second to last
    layer") are ranked by how much more they are activated by clean images
    stamped with the trigger than by the same images clean (relative to
    their clean spread, see ``neuron_ranking``); the top ``top_fraction``
    are kept, and an input is flagged when its mean activation over those
    neurons is above a threshold learned on clean data at
    ``false_rejection_rate`` (from neurons chosen without the images scored,
    see ``cv``).

    Needs a white-box model (a torch module or a skorch net), the trigger
    (usually reversed by :class:`NeuralCleanse`, never the attacker's) and
    clean images.

    {detector_convention}

    The score is minus the mean activation of the selected neurons
    (standardized by default, see ``neuron_ranking``).

    Parameters
    ----------
    model : torch.nn.Module or skorch.NeuralNetClassifier
        The (suspect) model; never modified (not even its train/eval flags:
        activations come from an eval-mode copy sharing its weights), kept
        by reference by ``clone``. Probability outputs are read as in
        :class:`~backdoorlearn.ModelAdapter`; NaN or infinite outputs are
        refused with a ``ValueError``.
    triggers : Trigger, list of Trigger or fitted NeuralCleanse
        The trigger(s) whose neurons are watched. A fitted
        :class:`NeuralCleanse` contributes the triggers of its flagged labels
        (see ``no_trigger`` when it flagged none). With several triggers, the neurons of
        each are ranked separately and an input's score is its worst one.
    layer : str, default=None
        Name of the layer watched (any module the forward pass calls; the
        error lists them). ``None`` means the penultimate layer: the module
        whose output the final classifier layer reads (``penultimate_name``
        where the module declares it, otherwise found from one traced
        forward pass: the input of the last ``nn.Linear`` on the way to the
        logits, never the logits themselves).
    top_fraction : float, default=0.01
        Fraction of the layer's neurons kept (the paper's top 1%), but never
        fewer than ``min_neurons`` (``n_neurons_`` says how many were used).
    min_neurons : int, default=8
        Fewest neurons kept, a deviation from the paper, whose layers have
        hundreds of units: on a 64-unit layer 1% is less than one neuron,
        and a single neuron is a noisy detector
        (``benchmarks/results/neural_cleanse.txt`` compares 1 and 8).
    neuron_ranking : {"standardized", "gap"}, default="standardized"
        How the neurons are ranked: ``"gap"`` is the paper's mean
        activation with the trigger minus without it; ``"standardized"``
        divides that gap by the neuron's standard deviation over the clean
        images, a deviation from the paper that prefers neurons the trigger
        moves far outside their clean range over neurons that are merely
        large, and scores an input by the same standardized activations
        (minus the clean mean, over the clean standard deviation), so that
        with several triggers each one's score is on the same scale before
        the worst is taken (with raw activations, the trigger whose neurons
        are largest sets the threshold and the others' scores drown
        under it). Chosen on the development zoo
        (``benchmarks/bench_pipeline.py --split development``), where it
        caught more of the true triggers at the same false positive rate.
    false_rejection_rate : float, default=0.05
        Wanted fraction of clean inputs flagged, in (0, 1): ``threshold_`` is
        the clean scores' quantile at this rate (the paper's 5% false
        positive rate).
    threshold : float, default=None
        A fixed threshold on the score instead of the learned one; must be
        finite.
    threshold_method : {"quantile", "normal"}, default="quantile"
        Empirical quantile of the clean scores, or ``mean - z * std`` of a
        normal fitted to them.
    cv : int or None, default=5
        The threshold is learned from out-of-fold clean scores: ``X`` is cut
        into ``cv`` folds, and each fold is scored with neurons chosen on the
        other folds, so that ``false_rejection_rate`` holds on clean inputs
        the neuron choice never saw (the neurons kept are then chosen on all
        of ``X``). ``None`` scores ``X`` with the neurons chosen on it, as the
        paper does, which biases the threshold toward the images it was
        learned on. ``benign_scores_`` holds the scores the threshold used.
    {device}
    {batch_size}
    no_trigger : {"warn", "raise"}, default="warn"
        What to do when ``triggers`` is a fitted NeuralCleanse that flagged
        no label (the model looked clean to it): ``"warn"`` fits a filter
        that flags no input (every score 0, ``threshold_`` 0, no neuron
        watched), with a warning, so a pipeline run on a clean model serves
        every input; ``"raise"`` is a ``ValueError``.

    Attributes
    ----------
    triggers_ : list of Trigger
        The triggers used.
    layer_ : str
        The layer watched.
    neurons_ : list of ndarray of int
        Indices (in the flattened layer output) of the neurons kept, one
        array per trigger, most trigger-specific first.
    n_neurons_ : int
        Neurons kept per trigger.
    neuron_center_, neuron_scale_ : ndarray of shape (n_units,)
        What the score subtracts from each unit's activation and divides it
        by (the clean mean and standard deviation with
        ``neuron_ranking="standardized"``; 0 and 1 with ``"gap"``).
    benign_scores_ : ndarray of shape (n_samples,)
        Scores of the clean training inputs (out-of-fold with ``cv``).
    threshold_ : float
        Inputs with a score below it are flagged.
    input_shape_ : tuple of int
        Shape of one input, as at fit.

    See Also
    --------
    NeuralCleanse : Reverse engineers the triggers this filter watches.
    STRIPDetector : A black-box input detector.

    References
    ----------
    .. [1] B. Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor
       Attacks in Neural Networks", IEEE S&P 2019, Sec. VI-A.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import ActivationFilter, SmallCNN, Trigger
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((60, 1, 8, 8), dtype=np.float32)
    >>> trigger = Trigger.patch((1, 8, 8), size=2)
    >>> filt = ActivationFilter(SmallCNN(1, 10), trigger).fit(X)
    >>> filt.predict(X).shape, filt.n_neurons_
    ((60,), 8)
    """

    # clone keeps the model and a fitted NeuralCleanse by reference (not refit-able copies)
    _model_params = ("model", "triggers")

    _parameter_constraints = {
        "model": [HasMethods("forward"), HasMethods("predict_proba")],
        "triggers": [Trigger, list, tuple, HasMethods("fit")],
        "layer": [str, None],
        "top_fraction": [Interval(numbers.Real, 0, 1, closed="right")],
        "min_neurons": [Interval(numbers.Integral, 1, None, closed="left")],
        "false_rejection_rate": [Interval(numbers.Real, 0, 1, closed="neither")],
        "threshold": [numbers.Real, None],
        "threshold_method": [StrOptions({"quantile", "normal"})],
        "device": DEVICE_CONSTRAINT,
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "no_trigger": [StrOptions({"warn", "raise"})],
        "neuron_ranking": [StrOptions({"standardized", "gap"})],
        "cv": [Interval(numbers.Integral, 2, None, closed="left"), None],
    }

    def __init__(self, model, triggers, layer=None, top_fraction=0.01, min_neurons=8,
                 neuron_ranking="standardized", false_rejection_rate=0.05, threshold=None,
                 threshold_method="quantile", cv=5, device=None, batch_size=256, no_trigger="warn"):
        self.model = model
        self.triggers = triggers
        self.layer = layer
        self.top_fraction = top_fraction
        self.min_neurons = min_neurons
        self.neuron_ranking = neuron_ranking
        self.cv = cv
        self.false_rejection_rate = false_rejection_rate
        self.threshold = threshold
        self.threshold_method = threshold_method
        self.device = device
        self.batch_size = batch_size
        self.no_trigger = no_trigger

    def _adapter(self):
        return ModelAdapter(self.model, defense=type(self).__name__, device=self.device,
                            batch_size=self.batch_size).require_white_box()

    def _resolve_triggers(self):
        name = type(self).__name__
        triggers = [t for t, _ in resolve_triggers(self.triggers, caller=name)]
        if not triggers:
            if self.no_trigger == "raise":
                raise ValueError(f"triggers in {name}: the NeuralCleanse given flagged no label, so "
                                 "there is no backdoor trigger to filter (no_trigger='raise').")
            warnings.warn(f"{name}: the NeuralCleanse given as triggers flagged no label; the filter "
                          "flags no input (no_trigger='warn').", UserWarning, stacklevel=4)
        return triggers

    def _activations(self, adapter, X):
        act = adapter.activations(X, self.layer_, batch_size=self.batch_size)
        return act.reshape(act.shape[0], -1)

    def _fit_detector(self, X):
        name = type(self).__name__
        X = check_images(X, name="X", caller=name)
        adapter = self._adapter()
        self.triggers_ = self._resolve_triggers()
        self.layer_ = self.layer if self.layer is not None else adapter.default_penultimate_layer(X)
        adapter.get_layer(self.layer_)
        clean = self._activations(adapter, X)
        n_units = clean.shape[1]
        # Sec. V-C / VI-A: the top 1% of the neurons; at least min_neurons on small layers.
        self.n_neurons_ = min(n_units, max(self.min_neurons, int(math.floor(self.top_fraction * n_units))))
        gaps = [self._activations(adapter, t.apply(X)) - clean for t in self.triggers_]
        self.neurons_, self.neuron_center_, self.neuron_scale_ = self._choose(clean, gaps, np.arange(len(X)))
        if self.cv is None or not self.triggers_:
            return self._scores_from(clean)
        # The threshold from clean scores of neurons chosen without them (out-of-fold), so that it holds
        # on inputs the filter never saw; the final neurons use all of X.
        if len(X) < self.cv:
            raise ValueError(f"X in {name}.fit must hold at least cv={self.cv} images; got {len(X)}.")
        folds = np.array_split(np.random.default_rng(0).permutation(len(X)), self.cv)
        scores = np.empty(len(X))
        for fold in folds:
            chosen = self._choose(clean, gaps, np.setdiff1d(np.arange(len(X)), fold))
            scores[fold] = self._scores_from(clean[fold], *chosen)
        return scores

    def _choose(self, clean, gaps, rows):
        """The ``n_neurons_`` most trigger-specific neurons of each trigger, ranked on ``rows`` only.

        Returns ``(neurons, center, scale)``: the neurons, and what a score
        subtracts from and divides the activations by (0 and 1 for the
        paper's raw ``"gap"`` ranking; the clean mean and spread on ``rows``
        for ``"standardized"``).
        """
        center, scale = np.zeros(clean.shape[1]), np.ones(clean.shape[1])
        if self.neuron_ranking == "standardized":
            spread = clean[rows].std(axis=0)
            center, scale = clean[rows].mean(axis=0), spread + 1e-6 * spread.max() + 1e-12
        neurons = [np.argsort(-(gap[rows].mean(axis=0) / scale), kind="stable")[: self.n_neurons_] for gap in gaps]
        return neurons, center, scale

    def _scores_from(self, act, neurons=None, center=None, scale=None):
        if neurons is None:
            neurons, center, scale = self.neurons_, self.neuron_center_, self.neuron_scale_
        if not neurons:  # nothing to watch: every score is 0, and the threshold 0 flags nothing
            return np.zeros(len(act))
        means = np.stack([((act[:, idx] - center[idx]) / scale[idx]).mean(axis=1) for idx in neurons], axis=1)
        return -means.max(axis=1)

    def _score_samples(self, X):
        X = check_images(X, name="X", caller=type(self).__name__)
        return self._scores_from(self._activations(self._adapter(), X))

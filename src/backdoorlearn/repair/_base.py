"""The template of the repairs and the pruning search two of them share."""

from __future__ import annotations

import numbers
import warnings
from abc import ABCMeta, abstractmethod

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from sklearn.utils._param_validation import Interval, StrOptions

from .._utils import check_images, check_label_value, check_labels
from ..metrics import attack_success_rate, clean_accuracy
from ..models import ImageClassifierNet, ModelAdapter
from ..models._adapter import NonFiniteOutputError
from ..models._surgery import OutputMask, UnitMask, masked_units, zero_units
from ..models._training import ShiftOrNoise

#: The values of the ``no_trigger`` parameter of the trigger-fed repairs.
NO_TRIGGER = StrOptions({"warn", "fine-prune", "raise"})

#: Constraints of the fine-tuning recipe's parameters (``SHARED["fine_tune_recipe"]``), shared by the repairs that
#: fine-tune (FinePruner, Unlearner).
FINE_TUNE_RECIPE_CONSTRAINTS = {
    "lr_schedule": [StrOptions({"cosine", "constant"})],
    "label_smoothing": [Interval(numbers.Real, 0, 1, closed="left")],
    "max_shift": [Interval(numbers.Integral, 0, None, closed="left")],
    "noise_std": [Interval(numbers.Real, 0, None, closed="left")],
    "noise_prob": [Interval(numbers.Real, 0, 1, closed="both")],
    "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
}

__all__ = ["BaseRepair", "PruningSearch", "RepairWarning", "bisect_first", "checked_learning_rate"]

#: Learning rates a checked fine-tuning tries, as fractions of the ``lr`` parameter, in order.
LR_STEPS = (1.0, 1 / 3, 1 / 10)
#: Two-sided 5% critical value of McNemar's test (normal approximation), for the learning-rate check.
MCNEMAR_Z = 1.96


class RepairWarning(UserWarning):
    """A repair returned a model that failed its checks (diverged, or lost too much accuracy).

    The repair still sets ``repaired_model_``, with ``repair_ok_ = False``
    and the reasons in ``repair_problems_``: the model must not be used as
    if the backdoor had been removed at no cost.

    See Also
    --------
    backdoorlearn.repair.BaseRepair : The checks every repair runs.

    Examples
    --------
    >>> import warnings
    >>> from backdoorlearn import RepairWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", RepairWarning)  # turn failed repairs into errors
    ...     pass
    """


class BaseRepair(BaseEstimator, metaclass=ABCMeta):
    """Base class of the repairs: ``fit(model, X, y)`` puts a repaired copy in ``repaired_model_``.

    It owns the public methods: :meth:`fit` validates the parameters, wraps
    the model in a white-box :class:`~backdoorlearn.models.ModelAdapter`
    (a black box gets a ``TypeError`` naming the repair), checks the images
    and their labels against the model's classes, and hands them to the one
    hook a repair implements:

    - ``_repair(adapter, X, y, classes, **fit_params)``: repair a copy of
      ``adapter``'s model (never the model itself), set the repair's own
      fitted attributes and return the repaired network as a fitted skorch
      ``NeuralNetClassifier``.

    Before the hook runs, :meth:`fit` refuses work it cannot do honestly:
    fewer images than the model has classes (clean accuracy and fine-tuning
    on so few mean nothing), target labels out of the model's range (the
    keys of a ``triggers`` dict, a ``target_label``). After it, the repaired
    model is checked: weights holding NaN or infinity (a diverged
    fine-tuning) or a loss of clean accuracy on ``X`` larger than the
    budget (the ``max_accuracy_drop`` parameter where the repair has one,
    else 0.05) raise a :class:`RepairWarning` and set ``repair_ok_`` to
    False, with the reasons in ``repair_problems_``; ``accuracy_before_``
    and ``accuracy_repaired_`` hold the two accuracies.

    A module returning probabilities instead of logits is read as such (see
    :class:`~backdoorlearn.ModelAdapter`): the repaired copy carries a hook
    returning their logarithm, so ``repaired_model_.predict_proba`` is
    right.

    :meth:`predict`, :meth:`predict_proba` and :meth:`score` delegate to
    ``repaired_model_``. A repair needs ``batch_size`` and ``device``
    parameters; the pruning repairs search the amount of pruning with
    ``PruningSearch`` and record it with ``_record_pruning``.

    The shape is that of a model-level tool, ``fit(model, X, y)``, not of a
    scikit-learn classifier (``fit(X, y)``): a repair does not go into
    ``GridSearchCV`` or ``Pipeline`` itself; its ``repaired_model_`` does.

    See Also
    --------
    backdoorlearn.FinePruner : Fine-Pruning.
    backdoorlearn.NeuronPruner : Neural Cleanse's neuron pruning.
    backdoorlearn.Unlearner : Neural Cleanse's unlearning.

    Examples
    --------
    A repair that hands back an unchanged copy:

    >>> import numpy as np
    >>> from backdoorlearn import SmallCNN
    >>> from backdoorlearn.repair import BaseRepair
    >>> class Copy(BaseRepair):
    ...     _parameter_constraints = {}
    ...     def __init__(self, batch_size=256, device=None):
    ...         self.batch_size = batch_size
    ...         self.device = device
    ...     def _repair(self, adapter, X, y, classes):
    ...         return adapter.to_net(classes=classes)
    >>> X = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    >>> repair = Copy().fit(SmallCNN(1, 4), X, np.arange(20) % 4)
    >>> repair.predict(X[:3]).shape
    (3,)
    """

    @abstractmethod
    def _repair(self, adapter, X, y, classes, **fit_params):
        """Repair a copy of ``adapter``'s model on validated ``X``, ``y``; return the repaired net."""

    def fit(self, model, X, y):
        """Repair a copy of ``model`` with the defender's clean data ``X``, ``y``.

        Parameters
        ----------
        model : torch.nn.Module or skorch.NeuralNetClassifier
            The (possibly backdoored) classifier; never modified.
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The defender's clean images.
        y : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        self : object
            The fitted repair.
        """
        return self._fit(model, X, y)

    def _fit(self, model, X, y, **fit_params):
        self._validate_params()
        name = type(self).__name__
        adapter = ModelAdapter(model, defense=name, device=self.device, batch_size=self.batch_size)
        adapter.require_white_box()
        X = check_images(X, name="X", caller=name)
        classes = adapter.classes_
        n_classes = len(classes) if classes is not None else adapter.n_classes(X[:1])
        if classes is None:
            classes = np.arange(n_classes)
        y = check_labels(y, n_samples=len(X), n_classes=n_classes, caller=name)
        self._check_work(X, n_classes)
        accuracy_before = clean_accuracy(y, adapter.predict(X))
        self.repaired_model_ = self._repair(adapter, X, y, classes, **fit_params)
        self.input_shape_ = tuple(X.shape[1:])
        if isinstance(self.repaired_model_, ImageClassifierNet):
            # the returned net takes what the repair took (float64, (n, H, W)) and refuses other sizes
            self.repaired_model_.input_shape_ = self.input_shape_
        self._check_result(X, y, accuracy_before)
        return self

    def _resolve_or_fallback(self, adapter, X, y, classes):
        """The ``(trigger, target)`` pairs, or the repaired net of the ``no_trigger`` rule when there are none.

        Returns ``(pairs, None)`` when there are triggers, ``([], net)`` when
        the NeuralCleanse given flagged nothing and ``no_trigger`` decided.
        """
        from ..triggers import resolve_triggers

        name = type(self).__name__
        pairs = resolve_triggers(self.triggers, caller=name, image_shape=X.shape[1:])
        self.n_triggers_ = len(pairs)
        self.fallback_ = None
        if pairs:
            return pairs, None
        if self.no_trigger == "raise":
            raise ValueError(f"triggers in {name}: the NeuralCleanse given flagged no label, so there is no "
                             "trigger to repair against (no_trigger='raise').")
        if self.no_trigger == "fine-prune":
            from ._fine_pruning import FinePruner

            warnings.warn(f"{name}: the NeuralCleanse given as triggers flagged no label; repairing with "
                          "FinePruner, which needs no trigger (no_trigger='fine-prune'; 'warn' leaves the model "
                          "unchanged).", UserWarning, stacklevel=5)
            self.fallback_ = FinePruner(batch_size=self.batch_size, device=self.device,
                                        random_state=getattr(self, "random_state", None))
            return [], self.fallback_._repair(adapter, X, y, classes, monitor=(None, None, None))
        warnings.warn(f"{name}: the NeuralCleanse given as triggers flagged no label; repaired_model_ is an "
                      "unchanged copy of the model (no_trigger='fine-prune' repairs it without a trigger).",
                      UserWarning, stacklevel=5)
        return [], adapter.to_net(classes=classes)

    #: Clean accuracy a repair may lose on ``X`` when it has no ``max_accuracy_drop`` parameter.
    _default_accuracy_budget = 0.05

    def _accuracy_budget(self):
        """Clean accuracy the repair may lose: ``max_accuracy_drop`` where it has one."""
        return float(self.get_params(deep=False).get("max_accuracy_drop", self._default_accuracy_budget))

    def _fine_tune_recipe(self):
        """The keyword arguments of ``fine_tune`` set by the recipe parameters (``FINE_TUNE_RECIPE_CONSTRAINTS``)."""
        augment = None
        if self.max_shift > 0 or (self.noise_std > 0 and self.noise_prob > 0):
            augment = ShiftOrNoise(self.max_shift, self.noise_std, self.noise_prob)
        return dict(weight_decay=self.weight_decay, lr_schedule=self.lr_schedule,
                    label_smoothing=self.label_smoothing, augment=augment)

    def _checked_fine_tune(self, train, reference, X, y, seed):
        """Fine-tune on all of ``X`` at the rate :func:`checked_learning_rate` keeps; set ``lr_``, ``lr_search_``.

        ``train(rows, lr, seed, verbose)`` fine-tunes a fresh copy on
        ``X[rows]``; the trials run silent, the final fine-tuning with the
        repair's ``verbose``. No check without fine-tuning epochs.
        """
        self.lr_, self.lr_search_ = self.lr, None
        if self.fine_tune_epochs > 0:
            self.lr_, self.lr_search_ = checked_learning_rate(
                lambda rows, lr, trial_seed: train(rows, lr, trial_seed, 0), reference, X, y, lr=self.lr,
                fraction=self.validation_fraction, tolerance=self._accuracy_budget(), seed=seed)
        return train(slice(None), self.lr_, seed, self.verbose)

    def _check_work(self, X, n_classes):
        """Refuse, before any work, what would make the repair meaningless."""
        name = type(self).__name__
        if len(X) < n_classes:
            raise ValueError(
                f"X in {name}.fit must hold at least one image per class of the model ({n_classes}) "
                f"to measure clean accuracy and repair without erasing classes; got {len(X)} image(s)."
            )
        if "triggers" in self.get_params(deep=False):
            from ..triggers import resolve_triggers

            resolve_triggers(self.triggers, caller=name, image_shape=X.shape[1:], n_classes=n_classes)
        target = self.get_params(deep=False).get("target_label")
        if target is not None:
            check_label_value(target, n_classes, name="target_label", caller=name)

    def _check_result(self, X, y, accuracy_before):
        """Check the repaired model; warn and set ``repair_ok_`` when it failed."""
        name = type(self).__name__
        problems = []
        module = getattr(self.repaired_model_, "module_", None)
        tensors = [] if module is None else [*module.parameters(), *module.buffers()]
        finite = all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())
        self.accuracy_before_ = float(accuracy_before)
        if not finite:
            problems.append("its weights hold NaN or infinity: the fine-tuning diverged (lower lr)")
            self.accuracy_repaired_ = float("nan")
        else:
            # through the adapter, not skorch's predict, whose DataLoader draws from torch's global generator
            repaired = ModelAdapter(self.repaired_model_, defense=name, batch_size=self.batch_size)
            self.accuracy_repaired_ = float(clean_accuracy(y, repaired.predict(X)))
            budget = self._accuracy_budget()
            lost = accuracy_before - self.accuracy_repaired_
            if lost > budget + 1e-12:
                problems.append(
                    f"its clean accuracy on X fell from {accuracy_before:.3f} to "
                    f"{self.accuracy_repaired_:.3f}, more than the budget of {budget:g}"
                )
        search = getattr(self, "lr_search_", None)
        if search is not None and not search.passed:
            rates = ", ".join(f"{r:g}" for r in search.lr)
            problems.append(
                f"fine-tuned at each learning rate tried ({rates}) on all but {search.n_validation} images of X, "
                f"it lost more than the budget on those images (best {search.validation_accuracy.max():.3f} "
                f"against {search.reference_accuracy:.3f} before the repair); lr={self.lr_:g} was kept")
        self.repair_problems_ = problems
        self.repair_ok_ = not problems
        if problems:
            warnings.warn(
                f"{name}: the repaired model failed its checks: {'; '.join(problems)}. It is kept in "
                "repaired_model_ with repair_ok_=False; do not deploy it as repaired.",
                RepairWarning, stacklevel=4)

    def _check_X(self, X):
        check_is_fitted(self, "repaired_model_")
        return check_images(X, name="X", caller=type(self).__name__, image_shape=self.input_shape_)

    def predict(self, X):
        """Class labels predicted by the repaired model.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the shape seen at fit.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            What ``repaired_model_.predict`` returns.
        """
        X = self._check_X(X)
        return self.repaired_model_.predict(X)

    def predict_proba(self, X):
        """Class probabilities of the repaired model.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the shape seen at fit.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            What ``repaired_model_.predict_proba`` returns.
        """
        X = self._check_X(X)
        return self.repaired_model_.predict_proba(X)

    def score(self, X, y):
        """Clean accuracy of the repaired model on ``X``, ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the shape seen at fit.
        y : array-like of shape (n_samples,)
            Their true labels.

        Returns
        -------
        score : float
            :func:`~backdoorlearn.metrics.clean_accuracy` of :meth:`predict`.
        """
        return clean_accuracy(y, self.predict(X))

    def _record_pruning(self, search, k):
        """Set the fitted attributes every pruning repair shares, for ``k`` units pruned."""
        n_units = len(search.order)
        self.layer_ = search.site.layer
        self.activation_layer_ = search.site.point
        self.unit_order_ = search.order
        self.pruned_units_ = search.order[:k]
        self.prune_ratio_ = k / n_units
        self.accuracy_before_, _ = search(0)
        self.accuracy_pruned_, self.attack_success_pruned_ = search(k)
        self.pruning_curve_ = search.curve()


def _validation_split(y, fraction, seed):
    """``(fit rows, check rows)``: a stratified split of ``y``, or ``None`` when too small to check.

    Each class keeps at least one row on the fitting side; a class with one
    row is not checked.
    """
    rng = np.random.RandomState(seed)
    fit, check = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_check = min(int(round(fraction * len(rows))), len(rows) - 1)
        check.extend(rows[:n_check])
        fit.extend(rows[n_check:])
    if not check:
        return None
    return np.sort(np.array(fit)), np.sort(np.array(check))


def checked_learning_rate(train, reference, X, y, *, lr, fraction, tolerance, seed):
    """The fine-tuning learning rate that keeps accuracy on data the fine-tuning did not see.

    A few hundred images are too few to see over-fitting on the data
    trained on (a fine-tuned model fits them all): the check holds out a
    stratified ``fraction`` of ``X``, fine-tunes on the rest at each rate of
    ``lr * LR_STEPS`` in turn, and keeps the first that has not lost
    accuracy on the held-out rows against ``reference`` (the model before
    the repair) on the same rows; where every rate lost, the one with the
    best held-out accuracy. A rate has lost when its held-out accuracy is
    more than ``tolerance`` below the reference's *and* the loss is beyond
    the noise of so few rows: McNemar's test on the paired answers (rows
    only the reference gets right against rows only the fine-tuned model
    gets right, two-sided 5%). The caller then fine-tunes on all of ``X``
    at the rate kept.

    Parameters
    ----------
    train : callable
        ``train(rows, lr, seed)`` returns the model fine-tuned on ``X[rows]``
        at ``lr`` (a module or a skorch net).
    reference : callable
        ``reference(X)`` returns the labels the model before the repair predicts.
    X, y : ndarray
        The defender's clean images and labels.
    lr : float
        The first rate tried.
    fraction : float
        Share of each class held out; ``0`` skips the check.
    tolerance : float
        Accuracy (a rate) the fine-tuning may lose on the held-out rows.
    seed : int
        Seed of the split and of the trial fine-tunings.

    Returns
    -------
    lr : float
        The rate kept (``lr`` itself when the check is skipped).
    search : Bunch or None
        ``lr`` (the rates tried), ``validation_accuracy`` (held-out accuracy
        of each), ``reference_accuracy``, ``n_validation`` and ``passed``
        (whether the rate kept met the tolerance); ``None`` when skipped
        (``fraction=0``, or a set too small to hold rows out).
    """
    split = None if fraction <= 0 else _validation_split(y, fraction, seed)
    if split is None:
        return lr, None
    fit_rows, check_rows = split
    X_check, y_check = X[check_rows], y[check_rows]
    right_before = reference(X_check) == y_check
    base = float(right_before.mean())
    tried, scores, lost = [], [], []
    for step in LR_STEPS:
        rate = lr * step
        trial = ModelAdapter(train(fit_rows, rate, seed), defense="the learning-rate check")
        try:
            right = trial.predict(X_check) == y_check
        except NonFiniteOutputError:  # the trial diverged: it answers nothing right
            right = np.zeros(len(y_check), dtype=bool)
        tried.append(rate)
        scores.append(float(right.mean()))
        # McNemar's test on the paired answers: a loss counts only beyond the noise of so few rows
        worse, better = int((right_before & ~right).sum()), int((right & ~right_before).sum())
        lost.append(base - scores[-1] > tolerance + 1e-12 and worse - better > MCNEMAR_Z * np.sqrt(worse + better))
        if not lost[-1]:
            break
    passed = not lost[-1]
    kept = len(scores) - 1 if passed else int(np.argmax(scores))
    return tried[kept], Bunch(lr=np.array(tried), validation_accuracy=np.array(scores), reference_accuracy=base,
                              n_validation=len(check_rows), passed=bool(passed))


def bisect_first(n_max, done):
    """Smallest ``k`` in ``[0, n_max]`` with ``done(k)``, or ``None``.

    Assumes ``done`` is monotone (false up to some ``k``, true from there):
    ``done(0)`` and ``done(n_max)`` are evaluated first, then about
    ``log2(n_max)`` points in between.
    """
    if done(0):
        return 0
    if not done(n_max):
        return None
    lo, hi = 0, n_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if done(mid):
            hi = mid
        else:
            lo = mid
    return hi


class PruningSearch:
    """Clean accuracy and attack success of a model with its first ``k`` units pruned.

    Evaluates the adapter's model with the first ``k`` units of ``order``
    masked (forward hooks, no weight copy), once per ``k``: the
    evaluated points make the pruning curve.

    Parameters
    ----------
    adapter : ModelAdapter
        A copy of the user's model (hooks go on its runtime module).
    site : UnitSite
        The layer whose units are pruned, and where they are masked.
    order : ndarray of int
        All units of the layer, in pruning order.
    X, y : ndarray
        Clean images and labels: the clean accuracy of each point.
    attack_sets : list of (X, y, target), default=()
        Triggered images, their true labels and the target: the attack
        success of a point is the largest over the sets (``None`` without
        any).
    """

    def __init__(self, adapter, site, order, X, y, attack_sets=()):
        self.adapter = adapter
        self.site = site
        self.order = order
        self.X = X
        self.y = y
        self.attack_sets = list(attack_sets)
        self.points = {}

    def __call__(self, k):
        """``(clean accuracy, attack success)`` with the first ``k`` units pruned."""
        if k not in self.points:
            with masked_units(self.adapter, self.site, self.order[:k]):
                acc = clean_accuracy(self.y, self.adapter.predict(self.X))
                asr = None
                if self.attack_sets:
                    asr = max(attack_success_rate(y_t, self.adapter.predict(X_t), target)
                              for X_t, y_t, target in self.attack_sets)
            self.points[k] = (acc, asr)
        return self.points[k]

    def smallest(self, n_max, done):
        """Fewest units in ``[0, n_max]`` whose point satisfies ``done(acc, asr)``, or ``None``."""
        return bisect_first(n_max, lambda k: done(*self(k)))

    def largest(self, n_max, ok):
        """Most units in ``[0, n_max]`` whose point satisfies ``ok(acc, asr)`` (``ok(0)`` assumed)."""
        first_bad = bisect_first(n_max, lambda k: not ok(*self(k)))
        return n_max if first_bad is None else max(first_bad - 1, 0)

    def pruned_copy(self, k):
        """A copy of the module with the first ``k`` units zeroed, and the callback keeping them so.

        Where zeroing weights cannot silence a unit exactly (a residual
        block whose shortcut is the identity), the copy also carries an
        :class:`OutputMask` forward hook at the site's point.
        """
        units = [int(u) for u in self.order[:k]]
        zero = list(self.site.zero)
        module = zero_units(self.adapter.module_copy(), zero, units)
        if units and not self.site.exact:
            dict(module.named_modules())[self.site.point].register_forward_hook(OutputMask(units))
        return module, ("prune_mask", UnitMask(zero if len(zero) > 1 else zero[0], units))

    def curve(self):
        """The evaluated points, sorted: ``prune_ratio``, ``n_pruned``, ``clean_accuracy``, ``attack_success``."""
        ks = sorted(self.points)
        n_units = len(self.order)
        return Bunch(
            prune_ratio=np.array([j / n_units for j in ks]),
            n_pruned=np.array(ks),
            clean_accuracy=np.array([self.points[j][0] for j in ks]),
            attack_success=None if not self.attack_sets else np.array([self.points[j][1] for j in ks]),
        )

"""BadNets-style data poisoning (Gu et al., 2017)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from .._utils import check_images, check_label_value, check_labels
from ..triggers import Trigger

__all__ = ["BackdoorPoisoner"]


class BackdoorPoisoner(BaseEstimator):
    """BadNets-style data poisoning: stamp a trigger on some rows, relabel them.

    A fraction ``poison_rate`` of the training set is drawn from the rows that
    are eligible (true label not the target, and in ``source_labels`` when
    given), stamped with the trigger and relabelled to the target. Several
    (trigger, target) pairs make a multi-trigger multi-target attack; each pair
    gets an equal, disjoint share of the budget. ``source_labels`` makes a
    partial, source-specific backdoor: only those classes carry it.

    Parameters
    ----------
    trigger : Trigger or list of Trigger
        The trigger(s).
    target_label : int or list of int, default=0
        The target of each trigger.
    poison_rate : float, default=0.1
        Fraction of the training set that is poisoned, in (0, 1].
    source_labels : list of int, default=None
        Only rows of these classes are poisoned (a source-specific backdoor).
        ``None`` means every class but the target.
    n_classes : int, default=None
        Number of classes, to check the targets; ``None`` reads it from ``y``.
    random_state : int, RandomState instance or None, default=None
        Which rows are poisoned.

    Attributes
    ----------
    poison_mask_ : ndarray of shape (n_samples,), bool
        Rows that were poisoned.
    poison_indices_ : ndarray of int
        Their indices.
    poison_source_ : ndarray of shape (n_samples,), int
        For each row, which trigger poisoned it (-1 for clean rows).
    n_poisoned_ : int
        Number of poisoned rows (fewer than asked, with a warning, when too
        few rows are eligible).

    See Also
    --------
    Trigger : The trigger stamped on the poisoned rows.
    PruningAwareAttack : An attack designed to survive pruning.

    References
    ----------
    .. [1] T. Gu, B. Dolan-Gavitt, S. Garg, "BadNets: Identifying
       Vulnerabilities in the Machine Learning Model Supply Chain", 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import BackdoorPoisoner, Trigger
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((100, 1, 8, 8), dtype=np.float32)
    >>> y = np.arange(100) % 10
    >>> trigger = Trigger.patch((1, 8, 8), size=2)
    >>> poisoner = BackdoorPoisoner(trigger, target_label=0, poison_rate=0.1, random_state=0)
    >>> X_p, y_p = poisoner.fit_resample(X, y)
    >>> int(poisoner.n_poisoned_), bool((y_p[poisoner.poison_mask_] == 0).all())
    (10, True)
    >>> bool(np.array_equal(X[~poisoner.poison_mask_], X_p[~poisoner.poison_mask_]))
    True
    """

    _parameter_constraints = {
        "trigger": [Trigger, list, tuple],
        "target_label": [Interval(numbers.Integral, 0, None, closed="left"), list, tuple],
        "poison_rate": [Interval(numbers.Real, 0, 1, closed="right")],
        "source_labels": [list, tuple, np.ndarray, None],
        "n_classes": [Interval(numbers.Integral, 2, None, closed="left"), None],
        "random_state": ["random_state"],
    }

    def __init__(self, trigger, target_label=0, poison_rate=0.1, source_labels=None,
                 n_classes=None, random_state=None):
        self.trigger = trigger
        self.target_label = target_label
        self.poison_rate = poison_rate
        self.source_labels = source_labels
        self.n_classes = n_classes
        self.random_state = random_state

    def _pairs(self, n_classes):
        triggers = [self.trigger] if isinstance(self.trigger, Trigger) else list(self.trigger)
        targets = (
            [self.target_label] * len(triggers)
            if isinstance(self.target_label, numbers.Integral)
            else list(self.target_label)
        )
        if not triggers or len(triggers) != len(targets):
            raise ValueError(
                f"trigger and target_label must pair up: got {len(triggers)} trigger(s) and "
                f"{len(targets)} target(s)."
            )
        for t in triggers:
            if not isinstance(t, Trigger):
                raise TypeError(f"trigger must be a Trigger or a list of Trigger; got {type(t).__name__}.")
        targets = [check_label_value(t, n_classes, name="target_label", caller="BackdoorPoisoner")
                   for t in targets]
        return list(zip(triggers, targets))

    def fit_resample(self, X, y):
        """Return a poisoned copy of ``(X, y)``; the inputs are not modified.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            The clean training images.
        y : array-like of shape (n_samples,)
            Their labels.

        Returns
        -------
        X_poisoned : ndarray of the shape of ``X``, float32
            The images, the poisoned rows stamped with their trigger.
        y_poisoned : ndarray of shape (n_samples,), int64
            The labels, the poisoned rows relabelled to their target.
        """
        self._validate_params()
        X_img = check_images(X, name="X", caller="BackdoorPoisoner")
        y_arr = check_labels(y, n_samples=len(X_img), n_classes=self.n_classes, caller="BackdoorPoisoner")
        n_classes = self.n_classes or int(y_arr.max()) + 1
        pairs = self._pairs(n_classes)
        sources = None
        if self.source_labels is not None:
            sources = np.asarray(
                [check_label_value(s, n_classes, name="source_labels", caller="BackdoorPoisoner")
                 for s in self.source_labels]
            )
        rng = check_random_state(self.random_state)
        n = len(X_img)
        budget = max(1, int(round(self.poison_rate * n)))
        shares = np.full(len(pairs), budget // len(pairs))
        shares[: budget % len(pairs)] += 1

        X_out = X_img.copy()
        y_out = y_arr.copy()
        which = np.full(n, -1, dtype=np.int64)
        for k, ((trigger, target), share) in enumerate(zip(pairs, shares)):
            eligible = (y_arr != target) & (which < 0)
            if sources is not None:
                eligible &= np.isin(y_arr, sources)
            candidates = np.flatnonzero(eligible)
            if len(candidates) < share:
                warnings.warn(
                    f"BackdoorPoisoner: only {len(candidates)} rows are eligible for trigger {k} "
                    f"(target {target}); poisoning those instead of {share}.",
                    UserWarning,
                    stacklevel=2,
                )
                share = len(candidates)
            if share == 0:  # nothing eligible: the warning said so, no row to stamp
                continue
            rows = np.sort(rng.choice(candidates, size=share, replace=False))
            X_out[rows] = trigger.apply(X_img[rows])
            y_out[rows] = target
            which[rows] = k

        self.poison_source_ = which
        self.poison_mask_ = which >= 0
        self.poison_indices_ = np.flatnonzero(self.poison_mask_)
        self.n_poisoned_ = int(self.poison_mask_.sum())
        self.pairs_ = pairs
        return X_out.reshape(np.shape(X)), y_out

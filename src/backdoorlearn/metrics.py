"""The definitions of what a backdoor defense is measured by.

Every figure the library reports (in tests, benchmarks, the demo and the
defenses' own attributes) comes from these functions, so the definitions live
in one place.

Conventions: ``y_true``/``y_pred`` are class labels; for detectors, 1 means
*trojaned* (flagged) and 0 means *benign* (accepted), so scikit-learn's own
metrics apply with "trojaned" as the positive class (``recall`` is
``1 - FAR``).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import make_scorer

__all__ = [
    "attack_success_rate",
    "clean_accuracy",
    "defense_effectiveness_rate",
    "false_acceptance_rate",
    "false_rejection_rate",
    "make_attack_success_scorer",
    "robust_accuracy",
    "FAR_SCORER",
    "FRR_SCORER",
]


def _labels_1d(y, name, func):
    """``y`` as a 1-D array; a column ``(n, 1)`` is raveled, anything else of 2 or more dimensions refused."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"{name} in {func} must be a 1-D array of labels, one per sample; got an array of shape {arr.shape}."
        )
    return arr


def _pair(y_true, y_pred, func):
    # raveling would pair a (2, 3) array with a (3, 2) one element by element
    y_true = _labels_1d(y_true, "y_true", func)
    y_pred = _labels_1d(y_pred, "y_pred", func)
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred in {func} must have the same length; got {y_true.shape[0]} "
            f"and {y_pred.shape[0]}."
        )
    if y_true.size == 0:
        raise ValueError(f"y_true in {func} is empty; a rate over no sample is undefined.")
    return y_true, y_pred


def clean_accuracy(y_true, y_pred):
    """Accuracy on clean (untriggered) inputs.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.

    Returns
    -------
    accuracy : float
        Fraction of inputs whose prediction is the true label.

    Raises
    ------
    ValueError
        If ``y_true`` or ``y_pred`` is not 1-D (a column ``(n, 1)`` is
        accepted), they differ in length, or they are empty.

    Examples
    --------
    >>> from backdoorlearn.metrics import clean_accuracy
    >>> clean_accuracy([0, 1, 2, 3], [0, 1, 2, 0])
    0.75
    """
    y_true, y_pred = _pair(y_true, y_pred, "clean_accuracy")
    return float(np.mean(y_true == y_pred))


def _check_target(target_label, func, n_samples=None):
    """``target_label`` as a scalar or a 1-D array (one per input); ``None`` and missing values refused."""
    target = np.asarray(target_label)
    if target_label is None or (target.dtype == object and any(t is None for t in target.ravel())):
        raise ValueError(
            f"target_label in {func} must be the attacker's target: a label, or one label per input; "
            f"got {target_label!r}."
        )
    if target.ndim > 1 or (target.ndim == 1 and n_samples is not None and len(target) != n_samples):
        raise ValueError(
            f"target_label in {func} must be one label or one label per input"
            + (f" ({n_samples})" if n_samples is not None else "")
            + f"; got an array of shape {target.shape}."
        )
    if target.dtype.kind == "f" and not np.isfinite(target).all():
        raise ValueError(f"target_label in {func} must be a finite label; got {target_label!r}.")
    return target


def _non_target(y_true, target_label, func):
    target = np.broadcast_to(_check_target(target_label, func, len(y_true)), y_true.shape)
    keep = y_true != target
    if not keep.any():
        raise ValueError(
            f"{func}: every input's true label is the target label; attack success "
            "is measured on inputs from other classes."
        )
    return keep, target


def attack_success_rate(y_true, y_pred, target_label):
    """Fraction of triggered inputs from non-target classes that land on the target.

    Inputs whose true label already is the target are left out: the attack
    did nothing there.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels of the (triggered) inputs.
    y_pred : array-like of shape (n_samples,)
        The model's predictions on the triggered inputs.
    target_label : int or array-like of shape (n_samples,)
        The attacker's target (one per input for multi-target attacks).

    Returns
    -------
    asr : float
        Fraction of the non-target inputs predicted as the target.

    Raises
    ------
    ValueError
        If ``y_true`` or ``y_pred`` is not 1-D, they differ in length or are
        empty, ``target_label`` is None (or holds None, NaN) or is an array
        not of one label per input, or every input's true label is the
        target.

    Examples
    --------
    >>> from backdoorlearn.metrics import attack_success_rate
    >>> attack_success_rate([0, 1, 2, 3], [0, 0, 0, 3], target_label=0)
    0.6666666666666666
    """
    y_true, y_pred = _pair(y_true, y_pred, "attack_success_rate")
    keep, target = _non_target(y_true, target_label, "attack_success_rate")
    return float(np.mean(y_pred[keep] == target[keep]))


def robust_accuracy(y_true, y_pred, target_label=None):
    """Fraction of triggered inputs still given their true label.

    With ``target_label``, inputs whose true label is the target are left
    out (as in :func:`attack_success_rate`).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels of the (triggered) inputs.
    y_pred : array-like of shape (n_samples,)
        The model's predictions on them.
    target_label : int or array-like of shape (n_samples,), default=None
        The attacker's target; ``None`` keeps every input.

    Returns
    -------
    accuracy : float
        Fraction of the kept inputs predicted as their true label.

    Examples
    --------
    >>> from backdoorlearn.metrics import robust_accuracy
    >>> robust_accuracy([0, 1, 2, 3], [0, 0, 2, 3], target_label=0)
    0.6666666666666666
    """
    y_true, y_pred = _pair(y_true, y_pred, "robust_accuracy")
    if target_label is not None:
        keep, _ = _non_target(y_true, target_label, "robust_accuracy")
        y_true, y_pred = y_true[keep], y_pred[keep]
    return float(np.mean(y_true == y_pred))


def defense_effectiveness_rate(asr_before, asr_after, acc_before, acc_after):
    """Compute BackdoorBench's defense effectiveness rate (DER), in [0, 1].

    ``DER = [max(0, ASR_before - ASR_after) - max(0, CA_before - CA_after) + 1] / 2``:
    1 for a defense that removes the whole attack at no accuracy cost, 0.5
    for one that does nothing.

    Parameters
    ----------
    asr_before : float
        Attack success rate before the defense.
    asr_after : float
        Attack success rate after it.
    acc_before : float
        Clean accuracy before the defense.
    acc_after : float
        Clean accuracy after it.

    Returns
    -------
    der : float
        The defense effectiveness rate.

    References
    ----------
    .. [1] B. Wu et al., "BackdoorBench: A Comprehensive Benchmark of Backdoor
       Learning", NeurIPS Datasets and Benchmarks 2022.

    Examples
    --------
    >>> from backdoorlearn.metrics import defense_effectiveness_rate
    >>> defense_effectiveness_rate(1.0, 0.02, 0.98, 0.96)
    0.98
    """
    for name, v in (("asr_before", asr_before), ("asr_after", asr_after),
                    ("acc_before", acc_before), ("acc_after", acc_after)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be a rate in [0, 1]; got {v!r}.")
    der = (max(0.0, asr_before - asr_after) - max(0.0, acc_before - acc_after) + 1) / 2
    return round(float(der), 12)


def _binary(y_true, y_pred, func):
    y_true, y_pred = _pair(y_true, y_pred, func)
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} in {func} must hold 0 (benign) and 1 (trojaned) only.")
    return y_true, y_pred


def false_rejection_rate(y_true, y_pred):
    """Compute STRIP's FRR: the fraction of benign inputs (0) flagged as trojaned (1).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0 for a benign input, 1 for a trojaned one.
    y_pred : array-like of shape (n_samples,)
        A detector's ``predict``: 1 flagged, 0 accepted.

    Returns
    -------
    frr : float
        Fraction of the benign inputs flagged.

    Examples
    --------
    >>> from backdoorlearn.metrics import false_rejection_rate
    >>> false_rejection_rate([0, 0, 0, 0, 1], [0, 1, 0, 0, 1])
    0.25
    """
    y_true, y_pred = _binary(y_true, y_pred, "false_rejection_rate")
    benign = y_true == 0
    if not benign.any():
        raise ValueError("false_rejection_rate needs at least one benign input (y_true == 0).")
    return float(np.mean(y_pred[benign] == 1))


def false_acceptance_rate(y_true, y_pred):
    """Compute STRIP's FAR: the fraction of trojaned inputs (1) accepted as benign (0).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0 for a benign input, 1 for a trojaned one.
    y_pred : array-like of shape (n_samples,)
        A detector's ``predict``: 1 flagged, 0 accepted.

    Returns
    -------
    far : float
        Fraction of the trojaned inputs accepted.

    Examples
    --------
    >>> from backdoorlearn.metrics import false_acceptance_rate
    >>> false_acceptance_rate([1, 1, 1, 1, 0], [1, 0, 1, 1, 0])
    0.25
    """
    y_true, y_pred = _binary(y_true, y_pred, "false_acceptance_rate")
    trojaned = y_true == 1
    if not trojaned.any():
        raise ValueError("false_acceptance_rate needs at least one trojaned input (y_true == 1).")
    return float(np.mean(y_pred[trojaned] == 0))


#: Scorer of a detector's false rejection rate, for ``GridSearchCV`` and
#: ``cross_validate`` on a labelled mix (0 benign, 1 trojaned). scikit-learn
#: maximizes scores, so a scorer of a rate to minimize returns it negated:
#: ``-FRR``, 0 at best. A ``mean_test_frr`` of -0.02 in ``cv_results_`` is a
#: 2% false rejection rate; ``abs`` gives the rate back.
FRR_SCORER = make_scorer(false_rejection_rate, greater_is_better=False)
#: Scorer of a detector's false acceptance rate, negated like
#: :data:`FRR_SCORER`: ``-FAR``, 0 at best.
FAR_SCORER = make_scorer(false_acceptance_rate, greater_is_better=False)


def make_attack_success_scorer(target_label):
    """Make a scorer of attack success on triggered data, negated for ``GridSearchCV``.

    Use it on a classifier with a triggered validation set: a lower attack
    success rate gives a higher score.

    Parameters
    ----------
    target_label : int or array-like
        The attacker's target (see :func:`attack_success_rate`).

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X_triggered, y_true)`` returns minus the attack
        success rate of ``estimator.predict(X_triggered)``.

    Raises
    ------
    ValueError
        If ``target_label`` is None (or holds None or NaN) or is not a label
        or a 1-D array of labels: checked here, not at the first score.

    Examples
    --------
    >>> from backdoorlearn.metrics import make_attack_success_scorer
    >>> scorer = make_attack_success_scorer(target_label=0)
    """
    _check_target(target_label, "make_attack_success_scorer")
    return make_scorer(attack_success_rate, greater_is_better=False, target_label=target_label)

"""Which reversed triggers are anomalously small: Neural Cleanse's decision rules."""

from __future__ import annotations

import numpy as np

__all__ = ["log_anomaly_scores", "log_norm_thresholds"]

_MAD_CONSTANT = 1.4826  # consistency constant of the MAD for a normal distribution
# Smallest robust spread of the log norms that a score divides by: 0.1 is a 10%
# relative spread. Below it, ten labels whose norms all lie within a few percent of
# each other would turn an ordinary difference into a large score.
MIN_LOG_SCALE = 0.1


def log_anomaly_scores(l1_norms, groups=None, min_scale=MIN_LOG_SCALE):
    """How far each norm lies below the others, on the log scale, in robust standard deviations.

    For candidate ``i`` with norm ``L_i``, the reference is every *other*
    candidate of its group (leave one out)::

        score_i = (median(log L_j) - log L_i) / max(1.4826 * MAD(log L_j), min_scale)

    A backdoor's target needs a trigger several *times* smaller than a clean
    label's, whatever the scale of the norms: on the log scale the target is
    far from the others even where the clean labels' norms spread widely
    (from 25 to 150 on 28x28 images), which inflates the paper's MAD of raw
    norms. Leaving the candidate out of its own reference keeps it from
    inflating the spread it is measured against. Positive scores are below
    the reference median.

    Parameters
    ----------
    l1_norms : array-like of shape (n_candidates,)
        Positive L1 norms of the reversed masks.
    groups : array-like of shape (n_candidates,), default=None
        Candidates are compared within their group only (the pairs of one
        source label); ``None`` is one group.
    min_scale : float, default=0.1
        Floor on the robust spread of the log norms (see above).

    Returns
    -------
    scores : ndarray of shape (n_candidates,)
        ``nan`` for a candidate whose group has fewer than 3 members.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.inspection import log_anomaly_scores
    >>> norms = np.array([60.0, 25.0, 108.0, 70.0, 48.0, 11.0, 85.0, 59.0, 40.0, 66.0])
    >>> scores = log_anomaly_scores(norms)
    >>> int(np.argmax(scores)), round(float(scores.max()), 1)
    (5, 5.1)
    """
    logs, references = _loo_references(l1_norms, groups, min_scale)
    scores = np.full(len(logs), np.nan)
    for i, (median, scale) in references.items():
        scores[i] = (median - logs[i]) / scale
    return scores


def log_norm_thresholds(l1_norms, threshold, groups=None, min_scale=MIN_LOG_SCALE):
    """The norm below which each candidate's :func:`log_anomaly_scores` exceeds ``threshold``.

    ``exp(median(log L_j) - threshold * max(1.4826 * MAD(log L_j), min_scale))``
    over the other candidates ``j`` of the group: what a report draws as the
    decision line of each label, in the units of the norms.

    Parameters
    ----------
    l1_norms : array-like of shape (n_candidates,)
        Positive L1 norms of the reversed masks.
    threshold : float
        The score threshold (``NeuralCleanse.decision_threshold_``).
    groups : array-like of shape (n_candidates,), default=None
        As in :func:`log_anomaly_scores`.
    min_scale : float, default=0.1
        As in :func:`log_anomaly_scores`.

    Returns
    -------
    thresholds : ndarray of shape (n_candidates,)
        ``nan`` for a candidate whose group has fewer than 3 members.

    See Also
    --------
    log_anomaly_scores : The scores these thresholds bound.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.inspection import log_anomaly_scores, log_norm_thresholds
    >>> norms = np.array([60.0, 25.0, 108.0, 70.0, 48.0, 11.0, 85.0, 59.0, 40.0, 66.0])
    >>> bounds = log_norm_thresholds(norms, 3.5)
    >>> bool(((norms < bounds) == (log_anomaly_scores(norms) > 3.5)).all())
    True
    """
    _, references = _loo_references(l1_norms, groups, min_scale)
    bounds = np.full(len(np.atleast_1d(l1_norms)), np.nan)
    for i, (median, scale) in references.items():
        bounds[i] = np.exp(median - threshold * scale)
    return bounds


def _loo_references(l1_norms, groups, min_scale):
    """The log norms and, per candidate, the (median, scale) of the others in its group."""
    norms = np.asarray(l1_norms, dtype=np.float64)
    if norms.ndim != 1 or (norms <= 0).any() or not np.isfinite(norms).all():
        raise ValueError("l1_norms must be a 1-D array of positive finite norms; got "
                         f"{np.array2string(norms, precision=3)}.")
    groups = np.zeros(len(norms), dtype=np.int64) if groups is None else np.asarray(groups)
    logs = np.log(norms)
    references = {}
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if members.size < 3:
            continue
        for i in members:
            others = logs[members[members != i]]
            median = np.median(others)
            references[int(i)] = (median, max(_MAD_CONSTANT * np.median(np.abs(others - median)), min_scale))
    return logs, references

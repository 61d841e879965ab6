"""Histogram of a detector's scores (STRIP's normalized entropy) for benign and trojaned inputs."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["EntropyHistogramDisplay"]


class EntropyHistogramDisplay:
    """Benign and trojaned score histograms with the detection threshold (STRIP Fig. 8).

    Build it with :meth:`from_estimator` (a fitted detector and labelled
    inputs) or :meth:`from_predictions` (scores already computed); the
    constructor only stores what it is given. All plotting happens in
    :meth:`plot`, which imports matplotlib.

    Parameters
    ----------
    scores : ndarray of shape (n_samples,)
        The detector's ``score_samples`` (for STRIP, normalized entropy in
        [0, 1]; higher = more benign).
    y_true : ndarray of shape (n_samples,)
        0 for benign, 1 for trojaned inputs.
    threshold : float, default=None
        The detection boundary, drawn as a vertical line.
    score_name : str, default="normalized entropy"
        The x-axis label.

    Attributes
    ----------
    ax_ : matplotlib Axes
        The axes drawn on.
    figure_ : matplotlib Figure
        The figure holding ``ax_``.

    See Also
    --------
    backdoorlearn.STRIPDetector : The detector whose entropies are plotted.

    References
    ----------
    .. [1] Y. Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep
       Neural Networks", ACSAC 2019, Fig. 8.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn.plotting import EntropyHistogramDisplay
    >>> scores = np.r_[np.linspace(0.2, 0.6, 50), np.linspace(0.0, 0.05, 50)]
    >>> y = np.r_[np.zeros(50), np.ones(50)]
    >>> disp = EntropyHistogramDisplay.from_predictions(y, scores, threshold=0.1)
    >>> disp.ax_.get_xlabel()
    'normalized entropy'
    """

    def __init__(self, scores, y_true, *, threshold=None, score_name="normalized entropy"):
        self.scores = scores
        self.y_true = y_true
        self.threshold = threshold
        self.score_name = score_name

    @classmethod
    def from_estimator(cls, estimator, X, y, *, ax=None, bins=30, score_name="normalized entropy"):
        """Score labelled inputs with a fitted detector and plot the histograms.

        Parameters
        ----------
        estimator : fitted detector
            Anything with ``score_samples`` and ``threshold_`` (a fitted
            :class:`~backdoorlearn.STRIPDetector`, or a ``Pipeline`` ending
            in one).
        X : array-like of shape (n_samples, ...)
            Inputs, benign and trojaned.
        y : array-like of shape (n_samples,)
            0 for benign, 1 for trojaned.
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        bins : int, default=30
            Number of bins, shared by both histograms.
        score_name : str, default="normalized entropy"
            The x-axis label.

        Returns
        -------
        display : EntropyHistogramDisplay
        """
        if not hasattr(estimator, "score_samples"):
            raise TypeError(
                "estimator in EntropyHistogramDisplay.from_estimator must be a fitted detector "
                f"with score_samples; got {type(estimator).__name__}."
            )
        final = estimator[-1] if hasattr(estimator, "steps") else estimator
        check_is_fitted(final, "threshold_")
        scores = estimator.score_samples(X)
        return cls.from_predictions(y, scores, threshold=final.threshold_, ax=ax, bins=bins,
                                    score_name=score_name)

    @classmethod
    def from_predictions(cls, y_true, scores, *, threshold=None, ax=None, bins=30,
                         score_name="normalized entropy"):
        """Plot the histograms of scores already computed.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
            0 for benign, 1 for trojaned.
        scores : array-like of shape (n_samples,)
            Detector scores (higher = more benign).
        threshold : float, default=None
            The detection boundary to draw.
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        bins : int, default=30
            Number of bins, shared by both histograms.
        score_name : str, default="normalized entropy"
            The x-axis label.

        Returns
        -------
        display : EntropyHistogramDisplay
        """
        y_true = np.asarray(y_true).ravel()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        if y_true.shape != scores.shape:
            raise ValueError(
                f"y_true and scores in EntropyHistogramDisplay must have the same length; got "
                f"{y_true.shape[0]} and {scores.shape[0]}."
            )
        if not np.isin(y_true, (0, 1)).all():
            raise ValueError("y_true in EntropyHistogramDisplay must hold 0 (benign) and 1 (trojaned) only.")
        if not np.isfinite(scores).all():
            raise ValueError("scores in EntropyHistogramDisplay must be finite.")
        disp = cls(scores, y_true, threshold=threshold, score_name=score_name)
        return disp.plot(ax=ax, bins=bins)

    def plot(self, ax=None, *, bins=30):
        """Draw the histograms (and the threshold) on ``ax``.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; a new figure when None.
        bins : int, default=30
            Number of bins, shared by both histograms.

        Returns
        -------
        self : EntropyHistogramDisplay
            With ``ax_`` and ``figure_`` set.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots()
        scores = np.asarray(self.scores, dtype=np.float64)
        y = np.asarray(self.y_true)
        lo, hi = float(scores.min()), float(scores.max())
        if self.threshold is not None:
            lo, hi = min(lo, self.threshold), max(hi, self.threshold)
        edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
        for label, name, color in ((0, "benign", "tab:blue"), (1, "trojaned", "tab:red")):
            part = scores[y == label]
            if len(part):
                ax.hist(part, bins=edges, alpha=0.6, color=color, label=f"{name} (n={len(part)})",
                        weights=np.full(len(part), 1 / len(part)))
        if self.threshold is not None:
            ax.axvline(self.threshold, color="k", linestyle="--",
                       label=f"threshold = {self.threshold:.3g}")
        ax.set_xlabel(self.score_name)
        ax.set_ylabel("fraction of inputs")
        ax.legend()
        self.ax_ = ax
        self.figure_ = ax.figure
        return self

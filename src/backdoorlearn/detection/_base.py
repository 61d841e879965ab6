"""The shared shape of input-level detectors (STRIP, activation filters)."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
from scipy.stats import norm
from sklearn.base import BaseEstimator
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.validation import check_is_fitted

from .._utils import PrefitModelsMixin, check_finite_array

__all__ = ["BaseDetector"]


class BaseDetector(PrefitModelsMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class of input-level backdoor detectors.

    It owns the public methods (validation, ``check_is_fitted``, threshold,
    numpy out); a detector fills two hooks:

    - ``_fit_detector(X)``: learn whatever the scores need from benign ``X``
      and return the benign scores (computed so that an input is not scored
      against itself, where that matters);
    - ``_score_samples(X)``: scores of new inputs, higher = more benign.

    The threshold is learned at fit from the benign scores at the
    ``false_rejection_rate`` parameter, either as the empirical quantile or,
    with ``threshold_method="normal"``, as ``mean - z * std`` of a normal
    fitted to the benign scores. A ``threshold`` parameter that is not None
    overrides it. A detector has these three parameters.

    ``fit(X, y)``: with ``y``, only rows with ``y == 0`` are benign, so a
    labelled mix of clean (0) and trojaned (1) inputs works in ``GridSearchCV``.

    ``clone`` keeps the parameters named in ``_model_params`` (``model``) by
    reference instead of re-creating them unfitted, so a detector around a
    fitted model survives ``GridSearchCV`` and ``Pipeline``.

    See Also
    --------
    backdoorlearn.STRIPDetector : A black-box detector built on this class.
    backdoorlearn.ActivationFilter : A white-box detector built on this class.

    Examples
    --------
    A detector that calls inputs with a large first value trojaned:

    >>> import numpy as np
    >>> from backdoorlearn.detection import BaseDetector
    >>> class FirstValue(BaseDetector):
    ...     _parameter_constraints = {}
    ...     def __init__(self, false_rejection_rate=0.1, threshold=None, threshold_method="quantile"):
    ...         self.false_rejection_rate = false_rejection_rate
    ...         self.threshold = threshold
    ...         self.threshold_method = threshold_method
    ...     def _fit_detector(self, X):
    ...         return self._score_samples(X)
    ...     def _score_samples(self, X):
    ...         return -X[:, 0]
    >>> X = np.linspace(0, 1, 11)[:, None]
    >>> FirstValue().fit(X).predict(np.array([[0.5], [2.0]]))
    array([0, 1])
    """

    _min_benign = 2
    #: Parameters holding the (fitted) model: kept by reference by ``clone``.
    _model_params = ("model",)

    # -------------------------------------------------------------- hooks
    @abstractmethod
    def _fit_detector(self, X):
        """Learn from benign ``X``; return the benign scores."""

    @abstractmethod
    def _score_samples(self, X):
        """Scores of validated ``X``, higher = more benign."""

    def _check_X(self, X, *, reset):
        """Validate ``X``; at fit (``reset=True``) remember its per-sample shape."""
        name = type(self).__name__
        X = check_finite_array(X, name="X", caller=name)
        if reset:
            self.input_shape_ = tuple(X.shape[1:])
            self.n_features_in_ = int(np.prod(X.shape[1:])) if X.ndim > 1 else 1
        elif tuple(X.shape[1:]) != self.input_shape_:
            raise ValueError(
                f"X in {name} must have samples of shape {self.input_shape_}, as at fit; "
                f"got {tuple(X.shape[1:])}."
            )
        return X

    # -------------------------------------------------------------- public API
    def fit(self, X, y=None):
        """Learn from benign inputs and set ``threshold_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Benign inputs (or a labelled mix, see ``y``).
        y : array-like of shape (n_samples,), default=None
            Optional 0 (benign) / 1 (trojaned) labels, or booleans (True =
            trojaned): only rows with ``y == 0`` are used. Any other value
            (a class label such as 2, -1, a string) is refused.

        Returns
        -------
        self : object
            The fitted detector.

        Raises
        ------
        ValueError
            If ``y`` holds anything but 0 and 1 (or booleans), differs in
            length from ``X``, or leaves too few benign samples.
        """
        self._validate_params()
        X = self._check_X(X, reset=True)
        name = type(self).__name__
        if y is not None:
            y = np.asarray(y).ravel()
            if y.shape[0] != X.shape[0]:
                raise ValueError(
                    f"y in {name}.fit must have one label per sample ({X.shape[0]}); got {y.shape[0]}."
                )
            values = set(np.unique(y).tolist()) if y.size else set()
            if y.dtype.kind not in "biuf" or not values <= {0, 1}:
                shown = sorted(map(repr, values))[:5]
                raise ValueError(
                    f"y in {name}.fit must hold 0 (benign) and 1 (trojaned) only, or booleans; got "
                    f"{', '.join(shown)} ({y.dtype})."
                )
            X = X[y == 0]
        if X.shape[0] < self._min_benign:
            raise ValueError(
                f"{name}.fit needs at least {self._min_benign} benign samples; got {X.shape[0]}"
                + (" with y == 0." if y is not None else ".")
            )
        self._check_threshold_param()
        scores = self._check_scores(self._fit_detector(X))
        self.benign_scores_ = scores
        self.threshold_ = self._learn_threshold(scores)
        return self

    def _check_threshold_param(self):
        """Refuse a NaN or infinite ``threshold``: a NaN would flag nothing, silently."""
        t = self.threshold
        if t is not None and not np.isfinite(float(t)):
            raise ValueError(
                f"The 'threshold' parameter of {type(self).__name__} must be a finite float or None; "
                f"got {t!r}."
            )

    def _check_scores(self, scores):
        """Scores as float64, refused when the model made any of them NaN or infinite."""
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            n_bad = int((~np.isfinite(scores)).sum())
            raise ValueError(
                f"model given to {type(self).__name__} must return finite outputs; {n_bad} of "
                f"{scores.size} input(s) got a non-finite (NaN or infinite) score (check the model's weights "
                "and the inputs' scale)."
            )
        return scores

    def _learn_threshold(self, scores):
        if self.threshold is not None:
            return float(self.threshold)
        rate = self.false_rejection_rate
        if self.threshold_method == "normal":
            return float(scores.mean() - norm.ppf(1 - rate) * scores.std(ddof=1))
        return float(np.quantile(scores, rate))

    def score_samples(self, X):
        """Benign-ness score of each input (higher = more benign).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, of the per-sample shape seen at fit.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            Higher for more benign inputs.
        """
        check_is_fitted(self, "threshold_")
        X = self._check_X(X, reset=False)
        return self._check_scores(self._score_samples(X))

    def decision_function(self, X):
        """``score_samples(X) - threshold_``: negative for flagged inputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, of the per-sample shape seen at fit.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            Negative where the input is flagged as trojaned.
        """
        scores = self.score_samples(X)
        if not np.isfinite(self.threshold_):  # set by hand after fit
            raise ValueError(
                f"threshold_ of {type(self).__name__} must be finite; got {self.threshold_!r}."
            )
        return scores - self.threshold_

    def predict(self, X):
        """1 for inputs flagged as trojaned, 0 for accepted ones.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, of the per-sample shape seen at fit.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            1 (flagged, trojaned) or 0 (accepted, benign).
        """
        return (self.decision_function(X) < 0).astype(np.int64)

    def score(self, X, y):
        """Balanced accuracy of :meth:`predict` against 0/1 (benign/trojaned) labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, of the per-sample shape seen at fit.
        y : array-like of shape (n_samples,)
            0 for benign, 1 for trojaned inputs.

        Returns
        -------
        score : float
            Mean of the recalls of both classes (1 - FRR and 1 - FAR).
        """
        return float(balanced_accuracy_score(np.asarray(y).ravel(), self.predict(X)))

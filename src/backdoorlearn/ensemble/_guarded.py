"""GuardedClassifier: a model served behind an input-level detector (label N+1)."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.validation import check_is_fitted

from .._utils import PrefitModelsMixin, check_reject_label
from ..models import ModelAdapter

__all__ = ["GuardedClassifier"]


def _is_fitted(model):
    """Whether a model can predict as it is (a module always can)."""
    adapter = ModelAdapter(model, defense="GuardedClassifier")
    if adapter.kind == "torch":
        return True
    if adapter.kind == "skorch":
        return bool(getattr(model, "initialized_", False))
    try:
        check_is_fitted(model)
    except NotFittedError:
        return False
    return True


class GuardedClassifier(PrefitModelsMixin, ClassifierMixin, BaseEstimator):
    """Predict with a model, or answer ``reject_label`` for inputs a detector flags.

    The serving scheme of the STRIP + fine-pruning seeds: a (possibly
    backdoored, possibly repaired) model labels each input, and a run-time
    detector such as :class:`~backdoorlearn.STRIPDetector` screens it; a
    flagged input gets the extra label ``N + 1`` (``reject_label``, by
    default the number of classes ``N`` with classes ``0..N-1``) instead of the
    model's answer.

    It is black box when the detector is (STRIP needs only ``predict_proba``).

    Parameters
    ----------
    model : torch.nn.Module, skorch.NeuralNetClassifier or classifier
        The model that labels accepted inputs. A fitted (prefit) model is used
        as is and never modified; ``clone`` keeps it by reference. An unfitted
        scikit-learn or skorch classifier is cloned and fitted on ``(X, y)``
        in :meth:`fit`.
    detector : detector
        An input-level detector (``fit(X)``, ``predict(X)`` with 1 = flagged), e.g. ``STRIPDetector(model)``. It is cloned
        and fitted on the benign ``X`` given to :meth:`fit` (the parameter
        itself is left unfitted). If its ``model`` parameter is ``None``,
        the clone guards ``model``: ``GuardedClassifier(net,
        STRIPDetector(None))``.
    reject_label : int or str, default=None
        Label answered for flagged inputs. ``None``: the number of classes
        (the "N+1"-th label, after ``0..N-1``); the classes must then be
        integers. It must not be one of the model's classes, and must be of
        their kind: a number for numeric classes, a string for string
        classes (a string among integer classes would turn ``classes_`` and
        every prediction into strings).

    Attributes
    ----------
    model_ : object
        The model used to predict (``model`` itself when prefit).
    detector_ : detector
        The fitted clone of ``detector``.
    classes_ : ndarray of shape (n_classes + 1,)
        The model's classes followed by ``reject_label_``.
    reject_label_ : int or str
        The label of rejected inputs.
    n_classes_ : int
        Number of classes of the model (without the reject label).

    See Also
    --------
    backdoorlearn.STRIPDetector : The black-box run-time detector.

    Notes
    -----
    :meth:`score` is the accuracy against the given labels: a rejected clean
    input counts as an error, a rejected triggered input is right only where
    ``y`` holds ``reject_label_``.

    References
    ----------
    .. [1] Y. Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep
       Neural Networks", ACSAC 2019.
    .. [2] K. Liu, B. Dolan-Gavitt and S. Garg, "Fine-Pruning: Defending
       Against Backdooring Attacks on Deep Neural Networks", RAID 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import GuardedClassifier, STRIPDetector, SmallCNN
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((40, 1, 8, 8), dtype=np.float32)
    >>> model = SmallCNN(1, 10)
    >>> guard = GuardedClassifier(
    ...     model, STRIPDetector(model, n_perturbations=8, random_state=0)).fit(X)
    >>> guard.reject_label_
    10
    >>> guard.predict(X[:4]).shape
    (4,)
    """

    _parameter_constraints = {
        "model": "no_validation",
        "detector": [HasMethods(["fit", "predict"])],
        "reject_label": [Integral, str, None],
    }

    def __init__(self, model, detector, *, reject_label=None):
        self.model = model
        self.detector = detector
        self.reject_label = reject_label

    # The model is kept by reference (a fitted net must stay fitted); the
    # detector is cloned (it keeps its own model by reference).
    _model_params = ("model",)

    def fit(self, X, y=None):
        """Fit the detector on benign inputs (and an unfitted model on ``(X, y)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Benign (clean) inputs, such as the defender's hold-out set.
        y : array-like of shape (n_samples,), default=None
            Class labels: used only to fit an unfitted ``model``;
            ignored for a prefit one.

        Returns
        -------
        self : object
            The fitted classifier.

        Raises
        ------
        TypeError
            If ``reject_label`` is not of the classes' kind (a number for
            numeric classes, a string for string classes).
        ValueError
            If ``reject_label`` is one of the classes, or is None for classes
            that are not integers.
        """
        self._validate_params()
        if _is_fitted(self.model):
            self.model_ = self.model
        else:
            if y is None:
                raise ValueError(
                    "GuardedClassifier.fit got an unfitted model and y=None; pass the "
                    "class labels y to fit it, or give a fitted (prefit) model."
                )
            self.model_ = clone(self.model).fit(X, y)
        adapter = ModelAdapter(self.model_, defense="GuardedClassifier")
        classes = adapter.classes_
        if classes is None:
            classes = np.arange(adapter.n_classes(X))
        self.n_classes_ = len(classes)

        reject = self.reject_label
        if reject is None:
            if not np.issubdtype(np.asarray(classes).dtype, np.integer):
                raise ValueError(
                    "GuardedClassifier needs reject_label= for a model whose classes are not "
                    f"integers; got classes of dtype {np.asarray(classes).dtype}."
                )
            reject = self.n_classes_
        check_reject_label(reject, classes, caller="GuardedClassifier")
        self.reject_label_ = reject
        self.classes_ = np.asarray(list(np.asarray(classes).tolist()) + [reject])

        detector = clone(self.detector)
        params = detector.get_params(deep=False)
        if "model" in params and params["model"] is None:
            detector.set_params(model=self.model_)
        self.detector_ = detector.fit(X)
        self._adapter = adapter
        return self

    def predict(self, X):
        """The model's label, or ``reject_label_`` where the detector flags the input.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, as the model takes them.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The model's labels, with ``reject_label_`` for flagged inputs.
        """
        check_is_fitted(self, "detector_")
        flagged = self.detector_.predict(X).astype(bool)
        y = self._adapter.predict(X)
        if isinstance(self.reject_label_, str):
            y = y.astype(object)
        y[flagged] = self.reject_label_
        return y

    def reject(self, X):
        """1 where the detector flags the input (it will be rejected), else 0.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs, as the model takes them.

        Returns
        -------
        flagged : ndarray of shape (n_samples,)
            The detector's ``predict``: 1 = rejected.
        """
        check_is_fitted(self, "detector_")
        return self.detector_.predict(X)

"""Bimodel Backdoor Defence: a backdoored and a repaired model cross-examine each other."""

from __future__ import annotations

import numbers

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from .._docstring import fill_doc
from .._utils import DEVICE_CONSTRAINT, PrefitModelsMixin, check_finite_array, check_reject_label
from ..models import ModelAdapter

__all__ = ["BimodelClassifier"]

_MODELS = ("model", "repaired_model")


@fill_doc
class BimodelClassifier(PrefitModelsMixin, ClassifierMixin, BaseEstimator):
    """Bimodel Backdoor Defence (BBD): serve a backdoored model next to a repaired one.

    The backdoored model learned the clean task from the whole training set;
    a repaired model (fine-pruned on a small clean set, say) lost the backdoor
    but also some accuracy. BBD [1]_ serves both and lets them cross-examine
    each other: where they agree, their answer is returned; where they
    disagree, the input is rejected with :attr:`reject_label_` (the seeds'
    "N+1" label). A triggered input sends the backdoored model to the target
    while the repaired one still sees the true class: rejected. A clean input
    gets the same answer from both: accepted, with the backdoored model's
    accuracy.

    - **Targeted mode** (``target_labels`` given, e.g.
      ``NeuralCleanse().fit(...).flagged_labels_``): the backdoored model
      answers every input and only the inputs it sends to a target label are
      shown to the repaired model (Sec. 4.2.1). The second model's cost is
      paid for about ``len(target_labels) / n_classes`` of clean traffic
      (:meth:`cross_examine` says which inputs it saw).
    - **Untargeted mode** (``target_labels=None``): both models answer every
      input (Sec. 4.2.2), for attacks whose target is unknown.

    Both models are black boxes here: only ``predict_proba`` is used, so a
    torch module, a skorch net or any scikit-learn classifier works, and they
    need not share an architecture. They must be fitted already: :meth:`fit`
    only checks them and learns ``classes_``, so the classifier sits in a
    ``Pipeline`` and in ``cross_val_score`` (cloning keeps the fitted models,
    like scikit-learn's ``FrozenEstimator``).

    Parameters
    ----------
    model : torch.nn.Module, skorch.NeuralNetClassifier or classifier
        The (possibly) backdoored model, fitted. It answers first.
    repaired_model : torch.nn.Module, skorch.NeuralNetClassifier or classifier
        The repaired model, fitted, with the same classes (e.g.
        ``FinePruner().fit(model, X, y).repaired_model_``).
    target_labels : array-like of labels or None, default=None
        The labels an attack targets (``nc.flagged_labels_`` of a fitted
        :class:`~backdoorlearn.NeuralCleanse`); ``None`` for untargeted
        mode. An empty list (a NeuralCleanse that flagged nothing) is
        untargeted mode too, with a warning: with no known target, every
        input is cross-examined rather than none.
    reject_label : int, str or None, default=None
        What :meth:`predict` returns for a rejected input. ``None`` gives the
        number of classes (the label after ``0 .. N-1``), or one more than the
        largest class when that number is already a class, or ``"rejected"``
        for string classes. It must not be one of the classes, and must be
        of their kind: a number for numeric classes, a string for string
        classes (a string among integer classes would turn ``classes_`` and
        every prediction into strings).
    {batch_size}
    {device}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The classes both models predict.
    reject_label_ : int or str
        The label given to rejected inputs.
    target_labels_ : list or None
        The target labels, checked against ``classes_`` and sorted
        (``None`` in untargeted mode).
    input_shape_ : tuple of int
        The shape of one input seen at :meth:`fit`; :meth:`predict` and
        :meth:`cross_examine` refuse others.

    See Also
    --------
    backdoorlearn.FinePruner : Makes the repaired model the paper uses.
    backdoorlearn.NeuralCleanse : Finds the target labels for targeted mode.
    backdoorlearn.GuardedClassifier : A repaired model behind an input detector.

    Notes
    -----
    :meth:`predict` and :meth:`cross_examine` change no attribute of the
    estimator, so concurrent calls are safe; the share of inputs shown to the
    repaired model is ``cross_examine(X).asked.mean()``, computed per call.

    ``score`` is plain accuracy: a rejected input counts as wrong. To credit
    the rejection of a triggered input, map ``reject_label_`` to the true
    label before calling :func:`backdoorlearn.metrics.clean_accuracy` on the
    triggered part (as the user guide does).

    References
    ----------
    .. [1] Y. Huang, Y. Wang, J. Wang and Y. Wang, "Bimodel Backdoor Defence
       (BBD): Backdoor Defence for Triggered Attack", NYU project report.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from backdoorlearn import BimodelClassifier
    >>> from backdoorlearn.datasets import load_digits
    >>> X, y = load_digits()
    >>> X = X.reshape(len(X), -1)
    >>> first = LogisticRegression(max_iter=300).fit(X[:900], y[:900])
    >>> second = LogisticRegression(max_iter=300, C=0.1).fit(X[900:1300], y[900:1300])
    >>> bbd = BimodelClassifier(first, second, target_labels=[0]).fit(X[1300:], y[1300:])
    >>> bbd.reject_label_
    10
    >>> y_pred = bbd.predict(X[1300:])
    >>> bool(bbd.cross_examine(X[1300:]).asked.mean() < 0.2)
    True
    """

    _parameter_constraints = {
        "model": "no_validation",  # ModelAdapter checks it with its own message
        "repaired_model": "no_validation",
        "target_labels": ["array-like", None],
        "reject_label": [numbers.Integral, str, None],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "device": DEVICE_CONSTRAINT,
    }

    def __init__(self, model, repaired_model, target_labels=None, reject_label=None,
                 batch_size=256, device=None):
        self.model = model
        self.repaired_model = repaired_model
        self.target_labels = target_labels
        self.reject_label = reject_label
        self.batch_size = batch_size
        self.device = device

    # The two models are prefit and never modified: a clone shares them.
    _model_params = _MODELS

    def _adapters(self):
        return tuple(
            ModelAdapter(getattr(self, name), defense=type(self).__name__, device=self.device,
                         batch_size=self.batch_size)
            for name in _MODELS
        )

    def fit(self, X, y=None):
        """Check the two prefit models and learn ``classes_``; no training.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the models take; one forward pass of the first
            row tells the number of classes of a model that does not say it.
        y : array-like of shape (n_samples,), default=None
            Ignored when given (accepted for ``Pipeline`` and
            ``cross_val_score``).

        Returns
        -------
        self : BimodelClassifier
            The fitted classifier.

        Raises
        ------
        TypeError
            If ``reject_label`` is not of the classes' kind (a number for
            numeric classes, a string for string classes).
        ValueError
            If the two models' classes differ, ``reject_label`` is one of the
            classes, or ``target_labels`` names a label that is not a class.
        """
        self._validate_params()
        caller = type(self).__name__
        X = check_finite_array(X, name="X", caller=caller)
        classes = []
        for name, adapter in zip(_MODELS, self._adapters()):
            known = adapter.classes_
            if known is None:
                known = np.arange(adapter.n_classes(X[:1]))
            classes.append(np.asarray(known))
        first, second = classes
        if len(first) != len(second):
            raise ValueError(
                f"model and repaired_model in {caller} must predict the same classes; "
                f"model has {len(first)} classes and repaired_model {len(second)}."
            )
        if not np.array_equal(first, second):
            raise ValueError(
                f"model and repaired_model in {caller} must predict the same classes in the "
                f"same order; got {first.tolist()} and {second.tolist()}."
            )
        self.classes_ = first
        self.input_shape_ = tuple(X.shape[1:])
        self.reject_label_ = self._resolve_reject_label(first)
        self.target_labels_ = self._resolve_targets(first)
        return self

    def _resolve_reject_label(self, classes):
        caller = type(self).__name__
        if self.reject_label is None:
            if not np.issubdtype(classes.dtype, np.number):
                return "rejected"
            label = len(classes)
            if label in classes:
                label = int(np.max(classes)) + 1
            return label
        return check_reject_label(self.reject_label, classes, caller=caller)

    def _resolve_targets(self, classes):
        if self.target_labels is None:
            return None
        targets = np.unique(np.asarray(self.target_labels).ravel())
        if targets.size == 0:
            # what a NeuralCleanse that flagged nothing hands over: no known target, so no input
            # may skip the second model (untargeted mode), rather than none being checked
            warnings.warn(
                f"target_labels in {type(self).__name__} is empty (a NeuralCleanse that flagged no "
                "label?): every input is cross-examined, as with target_labels=None.",
                UserWarning, stacklevel=3)
            return None
        unknown = [t for t in targets.tolist() if not (_comparable(t, classes) and t in classes.tolist())]
        if unknown:
            raise ValueError(
                f"target_labels in {type(self).__name__} must be classes of the models "
                f"{classes.tolist()}; got {unknown}, which are not."
            )
        return targets.tolist()

    def cross_examine(self, X):
        """Predict and report which inputs the repaired model saw.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the models take.

        Returns
        -------
        result : sklearn.utils.Bunch
            ``y_pred`` (what :meth:`predict` returns), ``model_pred`` (the
            first model's label), ``asked`` (bool mask: shown to the
            repaired model; ``asked.mean()`` is the share of the inputs
            that paid for the second model), ``repaired_pred`` (its label
            where asked, the first model's elsewhere) and ``rejected``
            (bool mask).
        """
        check_is_fitted(self, "classes_")
        X = check_finite_array(X, name="X", caller=type(self).__name__)
        if tuple(X.shape[1:]) != self.input_shape_:
            # a model with adaptive pooling would answer for any image size
            raise ValueError(
                f"X in {type(self).__name__} must have samples of shape {self.input_shape_}, as at fit; "
                f"got {tuple(X.shape[1:])}."
            )
        first, second = self._adapters()
        pred1 = self.classes_[self._argmax(first, X)]
        if self.target_labels_ is None:
            asked = np.ones(len(X), dtype=bool)
        else:
            asked = np.isin(pred1, self.target_labels_)
        pred2 = pred1.copy()
        if asked.any():
            pred2[asked] = self.classes_[self._argmax(second, X[asked])]
        rejected = pred1 != pred2
        if rejected.any():
            dtype = np.result_type(pred1.dtype, np.asarray(self.reject_label_).dtype)
            y_pred = pred1.astype(dtype)
            y_pred[rejected] = self.reject_label_
        else:
            y_pred = pred1
        return Bunch(y_pred=y_pred, model_pred=pred1, asked=asked, repaired_pred=pred2, rejected=rejected)

    def _argmax(self, adapter, X):
        proba = adapter.predict_proba(X)
        if proba.shape[1] != len(self.classes_):
            raise ValueError(
                f"{type(self).__name__}: a model returned {proba.shape[1]} class "
                f"probabilities; fit saw {len(self.classes_)} classes."
            )
        return proba.argmax(axis=1)

    def predict(self, X):
        """The agreed label, or :attr:`reject_label_` where the models disagree.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Inputs of the shape the models take.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            A class of ``classes_`` or ``reject_label_`` per input.
        """
        return self.cross_examine(X).y_pred

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


def _comparable(value, classes):
    """Whether ``value`` and the classes are both numbers or both strings."""
    is_num = isinstance(value, numbers.Number) and not isinstance(value, bool)
    return is_num == bool(np.issubdtype(classes.dtype, np.number))

"""Checks every public estimator must pass, in one place.

scikit-learn's ``parametrize_with_checks`` runs on the configurations that
take arbitrary 2-D data: STRIP, the guarded and the bimodel classifiers
around a prefit ``predict_proba`` model of any width, each expected failure
listed with its reason. The other estimators wrap a white-box model fitted
on a fixed image shape (the repairs, Neural Cleanse, the activation filter)
or train a convolutional network on images (``AntiBackdoorLearner``), so
the generic checks' random ``(n, n_features)`` arrays cannot reach them; the
API checks that do not feed data are run on every estimator.
The contracts every defense keeps (the user's model and data unchanged,
the same ``random_state`` giving the same result, errors naming their
argument) are checked beside each defense, since each needs a fitted model
and its own budget, with one helper per contract (``tests/contracts.py``).
"""

import inspect

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.estimator_checks import (
    parametrize_with_checks,
    check_get_params_invariance,
    check_methods_sample_order_invariance,
    check_methods_subset_invariance,
    check_no_attributes_set_in_init,
    check_set_params,
)

import backdoorlearn as bl
from backdoorlearn.detection import BaseDetector
from backdoorlearn.metrics import clean_accuracy
from backdoorlearn.models import SmallCNN, wrap_module
from backdoorlearn.repair import BaseRepair


def _instances():
    net = wrap_module(SmallCNN(1, 10), classes=range(10))
    trigger = bl.Trigger.patch((1, 8, 8), size=2)
    return {
        "STRIPDetector": bl.STRIPDetector(net),
        "ActivationFilter": bl.ActivationFilter(net, trigger),
        "NeuralCleanse": bl.NeuralCleanse(),
        "FinePruner": bl.FinePruner(),
        "NeuronPruner": bl.NeuronPruner(trigger),
        "Unlearner": bl.Unlearner(trigger),
        "BimodelClassifier": bl.BimodelClassifier(net, net),
        "GuardedClassifier": bl.GuardedClassifier(net, bl.STRIPDetector(None)),
        "AntiBackdoorLearner": bl.AntiBackdoorLearner(SmallCNN),
        "BackdoorPoisoner": bl.BackdoorPoisoner(trigger),
        "PruningAwareAttack": bl.PruningAwareAttack(trigger),
    }


INSTANCES = _instances()


def test_every_public_estimator_is_checked():
    from sklearn.base import BaseEstimator

    public = {n for n in bl.__all__ if inspect.isclass(getattr(bl, n)) and issubclass(getattr(bl, n), BaseEstimator)}
    assert public == set(INSTANCES)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_sklearn_api_checks(name):
    est = INSTANCES[name]
    check_no_attributes_set_in_init(name, est)
    check_get_params_invariance(name, est)
    check_set_params(name, est)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_clone_keeps_parameters(name):
    est = INSTANCES[name]
    cloned = clone(est)
    assert type(cloned) is type(est)
    for key, value in est.get_params(deep=False).items():
        other = cloned.get_params(deep=False)[key]
        if isinstance(value, (int, float, str, type(None), bool)):
            assert other == value, key


@pytest.mark.parametrize("name", ["STRIPDetector", "ActivationFilter", "BimodelClassifier", "GuardedClassifier",
                                  "AntiBackdoorLearner"])
def test_unfitted_use_raises_not_fitted(name):
    est = clone(INSTANCES[name])
    X = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(NotFittedError):
        est.predict(X)


@pytest.mark.parametrize("name", ["NeuralCleanse", "FinePruner", "NeuronPruner", "Unlearner"])
def test_model_level_tools_refuse_a_black_box(name):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.random((30, 1, 8, 8), dtype=np.float32)
    y = np.arange(30) % 3
    black_box = LogisticRegression(max_iter=50).fit(X.reshape(30, -1), y)
    with pytest.raises(TypeError, match=f"{name} needs a white-box model"):
        clone(INSTANCES[name]).fit(black_box, X, y)


@pytest.mark.parametrize("base", [BaseDetector, BaseRepair])
def test_base_classes_enforce_their_hooks(base):
    class NoHook(base):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoHook()


def _tiny_repairs():
    trigger = bl.Trigger.patch((1, 8, 8), size=2)
    return {
        "FinePruner": bl.FinePruner(prune_ratio=0.25, fine_tune_epochs=1, random_state=0),
        "NeuronPruner": bl.NeuronPruner({0: trigger}, max_prune_ratio=0.5),
        "Unlearner": bl.Unlearner(trigger, fine_tune_epochs=1, random_state=0),
    }


@pytest.mark.filterwarnings("ignore:NeuronPruner")
@pytest.mark.parametrize("name", sorted(_tiny_repairs()))
def test_repairs_delegate_to_the_repaired_model(name):
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 8, 8), dtype=np.float32)
    y = np.arange(40) % 4
    repair = _tiny_repairs()[name].fit(SmallCNN(1, 4), X, y)
    np.testing.assert_array_equal(repair.predict(X), repair.repaired_model_.predict(X))
    np.testing.assert_allclose(repair.predict_proba(X), repair.repaired_model_.predict_proba(X))
    assert repair.score(X, y) == clean_accuracy(y, repair.repaired_model_.predict(X))
    assert repair.input_shape_ == (1, 8, 8)
    with pytest.raises(ValueError, match=r"images of shape \(1, 8, 8\)"):
        repair.predict(np.zeros((2, 1, 9, 9), np.float32))
    with pytest.raises(NotFittedError):
        clone(repair).predict(X)


class _AnyWidthBlackBox(ClassifierMixin, BaseEstimator):
    """A prefit black box with ``predict_proba`` on 2-D data of any width (3 classes)."""

    classes_ = np.arange(3)

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):
        return True

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        z = np.stack([X.mean(axis=1), X[:, 0], -X.mean(axis=1)], axis=1)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)


class _STRIPWithoutY(bl.STRIPDetector):
    """STRIP fitted on all of ``X``: scikit-learn's checks pass class labels (0, 1, 2) as ``y``, which a
    detector refuses (its ``y`` is 0 benign / 1 trojaned); what they check is the rest of the contract."""

    def fit(self, X, y=None):
        return super().fit(X)


def _black_box_2d_instances():
    strip = _STRIPWithoutY(_AnyWidthBlackBox(), n_perturbations=4, random_state=0)
    return {"STRIPDetector": strip,
            "GuardedClassifier": bl.GuardedClassifier(_AnyWidthBlackBox(), clone(strip).set_params(model=None)),
            "BimodelClassifier": bl.BimodelClassifier(_AnyWidthBlackBox(), _AnyWidthBlackBox())}


@pytest.mark.parametrize("check", [check_methods_sample_order_invariance, check_methods_subset_invariance],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", sorted(_black_box_2d_instances()))
def test_answers_do_not_depend_on_the_other_rows(name, check):
    # scikit-learn's own order and subset invariance checks, on the configurations that take
    # arbitrary 2-D data: STRIP draws each input's overlays from the input itself (issue 14).
    check(name, _black_box_2d_instances()[name])


# Why each black-box configuration fails the checks it fails (scikit-learn 1.9.1).
_INPUTS = {
    "check_dtype_object": "X must be numeric: an object array is refused, with a message naming X, not sklearn's",
    "check_fit1d": "a 1-D X is n scalar inputs, which a black-box model may take; its model decides",
    "check_fit2d_predict1d": "a 1-D X at predict is refused naming X and the fitted input shape, not 'Reshape your data'",
    "check_n_features_in_after_fitting": "the per-sample shape is checked through input_shape_ (images are not "
                                         "(n, n_features)), with our message, not n_features_in_'s",
}
_PREFIT = {
    "check_n_features_in": "fit only checks the prefit model; input_shape_ stands for n_features_in_",
    "check_classifiers_classes": "classes_ are the prefit model's, not learned from y (fit ignores y)",
    "check_classifiers_one_label": "classes_ are the prefit model's, not learned from y (fit ignores y)",
    "check_classifiers_train": "fit ignores y (the model is prefit), so it cannot refuse a y of the wrong length",
    "check_classifiers_regression_target": "fit ignores y (the model is prefit), continuous or not",
    "check_supervised_y_2d": "fit ignores y (the model is prefit), so no DataConversionWarning",
    "check_supervised_y_no_nan": "fit ignores y (the model is prefit), NaN or not",
}
_EXPECTED_FAILURES = {
    "STRIPDetector": {**_INPUTS, "check_fit2d_1sample": "fit needs 2 benign samples (a threshold from one "
                                                        "score is meaningless); the message says so"},
    "GuardedClassifier": {**_INPUTS, **_PREFIT, "check_fit2d_1sample": "its STRIP detector needs 2 benign samples"},
    "BimodelClassifier": {**_INPUTS, **_PREFIT},
}


@parametrize_with_checks(list(_black_box_2d_instances().values()),
                         expected_failed_checks=lambda est: _EXPECTED_FAILURES[
                             "STRIPDetector" if isinstance(est, bl.STRIPDetector) else type(est).__name__])
def test_sklearn_common_checks_on_2d_configurations(estimator, check):
    check(estimator)

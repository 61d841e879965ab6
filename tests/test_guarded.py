"""Tests of GuardedClassifier (STRIP + model, rejected inputs get label N+1)."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from contracts import raises_naming, watch

from backdoorlearn import GuardedClassifier, STRIPDetector
from backdoorlearn.metrics import attack_success_rate, clean_accuracy


@pytest.fixture(scope="module")
def guarded(digits_bench):
    b = digits_bench
    net = b.backdoored_model
    return GuardedClassifier(net, STRIPDetector(net, n_perturbations=50, random_state=0)).fit(b.X_holdout)


def test_rejects_triggered_inputs_and_keeps_clean_ones(digits_bench, guarded):
    b = digits_bench
    assert guarded.reject_label_ == 10
    assert guarded.classes_.tolist() == list(range(11))
    y_trig = guarded.predict(b.X_test_triggered)
    y_clean = guarded.predict(b.X_test)
    model_clean = b.backdoored_model.predict(b.X_test)
    # the backdoor no longer succeeds: triggered inputs get label N+1
    assert attack_success_rate(b.y_test, b.backdoored_model.predict(b.X_test_triggered), 0) > 0.9
    assert attack_success_rate(b.y_test, y_trig, 0) <= 0.02
    assert np.mean(y_trig == 10) >= 0.98
    # accepted inputs keep the model's label; the rejected clean ones are few
    accepted = y_clean != 10
    np.testing.assert_array_equal(y_clean[accepted], model_clean[accepted])
    assert accepted.mean() >= 0.97
    assert clean_accuracy(b.y_test, y_clean) >= clean_accuracy(b.y_test, model_clean) - 0.03
    np.testing.assert_array_equal(guarded.reject(b.X_test), (~accepted).astype(int))
    assert guarded.score(b.X_test, b.y_test) == pytest.approx(clean_accuracy(b.y_test, y_clean))


def test_detector_is_cloned_and_model_untouched(digits_bench):
    b = digits_bench
    net = b.backdoored_model
    detector = STRIPDetector(net, n_perturbations=5, random_state=0)
    with watch(net, b.X_holdout) as w:
        guard = GuardedClassifier(net, detector).fit(b.X_holdout)
        guard.predict(b.X_test[:20])
    w.assert_unchanged()
    assert not hasattr(detector, "threshold_")
    assert guard.detector_ is not detector and hasattr(guard.detector_, "threshold_")
    assert guard.model_ is net


def test_detector_without_model_guards_the_model(digits_bench):
    b = digits_bench
    guard = GuardedClassifier(b.backdoored_model, STRIPDetector(None, n_perturbations=5)).fit(b.X_holdout)
    assert guard.detector_.model is b.backdoored_model


def test_custom_reject_label_and_conflict(digits_bench):
    b = digits_bench
    det = STRIPDetector(b.backdoored_model, n_perturbations=5, threshold=2.0)  # flags everything
    guard = GuardedClassifier(b.backdoored_model, det, reject_label=-1).fit(b.X_holdout)
    assert set(guard.predict(b.X_test[:5])) == {-1}
    # a string among integer classes would make classes_ and every prediction strings (issue 14)
    with raises_naming("reject_label", TypeError, match="must be a number"):
        GuardedClassifier(b.backdoored_model, det, reject_label="rejected").fit(b.X_holdout)
    with raises_naming("reject_label", match="reject_label=3.*one of the model's classes"):
        GuardedClassifier(b.backdoored_model, det, reject_label=3).fit(b.X_holdout)


def test_bare_module_and_unfitted_estimator(digits_bench):
    b = digits_bench
    flat = lambda X: X.reshape(len(X), -1)  # noqa: E731
    guard = GuardedClassifier(b.backdoored_model.module_, STRIPDetector(None, n_perturbations=5)).fit(
        b.X_holdout)
    assert guard.n_classes_ == 10 and guard.reject_label_ == 10
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
    with raises_naming("y", match="unfitted model and y=None"):
        GuardedClassifier(mlp, STRIPDetector(None, n_perturbations=5)).fit(flat(b.X_holdout))
    guard = GuardedClassifier(mlp, STRIPDetector(None, n_perturbations=5, random_state=0)).fit(
        flat(b.X_holdout), b.y_holdout)
    assert not hasattr(mlp, "coefs_") and guard.model_ is not mlp
    assert guard.predict(flat(b.X_test[:10])).shape == (10,)


def test_pipeline_and_clone(digits_bench):
    b = digits_bench
    net = b.backdoored_model
    guard = GuardedClassifier(net, STRIPDetector(net, n_perturbations=20, random_state=0))
    copy = clone(guard)
    assert copy.model is net and copy.detector.model is net
    pipe = make_pipeline(FunctionTransformer(lambda Z: Z.reshape(-1, 1, 8, 8)), guard)
    pipe.fit(b.X_holdout.reshape(len(b.X_holdout), -1))
    pred = pipe.predict(b.X_test_triggered[:30].reshape(30, -1))
    assert np.mean(pred == 10) >= 0.9
    X_flat = b.X_test[:30].reshape(30, -1)
    assert pipe.score(X_flat, b.y_test[:30]) == accuracy_score(b.y_test[:30], pipe.predict(X_flat))


def test_unfitted_use():
    guard = GuardedClassifier(torch.nn.Linear(3, 2), STRIPDetector(None))
    with pytest.raises(NotFittedError):
        guard.predict(np.zeros((2, 3), np.float32))


def test_nested_params_do_not_reach_into_the_users_model(digits_bench):
    from backdoorlearn import BimodelClassifier, STRIPDetector

    net = digits_bench.backdoored_model
    for est in (STRIPDetector(net), GuardedClassifier(net, STRIPDetector(None)),
                BimodelClassifier(net, digits_bench.clean_model)):
        assert not any(k.startswith(("model__", "repaired_model__")) for k in est.get_params())
    with pytest.raises(ValueError, match="Invalid parameter"):
        BimodelClassifier(net, digits_bench.clean_model).set_params(model__lr=1.0)
    assert net.lr != 1.0

"""Tests for BimodelClassifier (Bimodel Backdoor Defence)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from contracts import raises_naming, watch

from backdoorlearn import BimodelClassifier, SmallCNN
from backdoorlearn.metrics import attack_success_rate, clean_accuracy, false_rejection_rate
from backdoorlearn.models import wrap_module
from backdoorlearn.repair import FinePruner


@pytest.fixture(scope="module")
def repaired(digits_bench):
    """The paper's repair: fine-pruning on the defender's clean hold-out, FinePruner's defaults."""
    b = digits_bench
    pruner = FinePruner(random_state=0)
    return pruner.fit(b.backdoored_model, b.X_holdout, b.y_holdout).repaired_model_


def _figures(bbd, b):
    """Clean rejection, attack success, accuracy with rejected triggered inputs credited."""
    clean = bbd.cross_examine(b.X_test)
    pred_clean, asked_clean = clean.y_pred, clean.asked.mean()
    pred_trig = bbd.predict(b.X_test_triggered)
    rej = bbd.reject_label_
    rejected = (pred_clean == rej).astype(int)
    frr = false_rejection_rate(np.zeros_like(rejected), rejected)
    asr = attack_success_rate(b.y_test, pred_trig, b.target_label)
    credited = np.where(pred_trig == rej, b.y_test, pred_trig)
    acc = clean_accuracy(np.r_[b.y_test, b.y_test], np.r_[pred_clean, credited])
    return frr, asr, acc, asked_clean


def test_targeted_mode_meets_the_targets(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired, target_labels=[b.target_label])
    bbd.fit(b.X_holdout, b.y_holdout)
    frr, asr, acc, asked = _figures(bbd, b)
    assert frr <= 0.02
    assert asr <= 0.01
    assert acc >= 0.95
    # The second model sees only what the backdoored one sends to the target:
    # about the target label's share of clean traffic (1 of 10 classes).
    share = np.mean(b.backdoored_model.predict(b.X_test) == b.target_label)
    assert asked == pytest.approx(share)
    assert asked <= 0.15


def test_untargeted_mode_stops_the_attack(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired).fit(b.X_holdout, b.y_holdout)
    _, asr, _, asked = _figures(bbd, b)
    assert asked == 1.0
    assert asr <= 0.01


def test_untargeted_mode_accuracy(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired).fit(b.X_holdout, b.y_holdout)
    _, _, acc, _ = _figures(bbd, b)
    assert acc >= 0.95


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: untargeted BBD rejects <= 2% of clean digits; benchmarks/results/bbd_abl.txt, "
    "digits 'untargeted' row"))
def test_untargeted_mode_clean_rejection(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired).fit(b.X_holdout, b.y_holdout)
    frr, _, _, _ = _figures(bbd, b)
    assert frr <= 0.02


def test_rejection_rule_and_cross_examine(digits_bench, repaired):
    b = digits_bench
    X = np.r_[b.X_test[:60], b.X_test_triggered[:60]]
    bbd = BimodelClassifier(b.backdoored_model, repaired, target_labels=[0]).fit(X)
    res = bbd.cross_examine(X)
    first = b.backdoored_model.predict(X)
    second = repaired.predict(X)
    np.testing.assert_array_equal(res.model_pred, first)
    np.testing.assert_array_equal(res.asked, first == 0)
    expected = np.where((first == 0) & (second != 0), bbd.reject_label_, first)
    np.testing.assert_array_equal(res.y_pred, expected)
    np.testing.assert_array_equal(bbd.predict(X), expected)
    assert res.asked.mean() == pytest.approx(np.mean(first == 0))


def test_models_agreeing_never_reject(digits_bench):
    b = digits_bench
    bbd = BimodelClassifier(b.clean_model, b.clean_model).fit(b.X_test)
    pred = bbd.predict(b.X_test)
    np.testing.assert_array_equal(pred, b.clean_model.predict(b.X_test))
    assert bbd.score(b.X_test, b.y_test) == pytest.approx(b.clean_model.score(b.X_test, b.y_test))


def test_reject_label_default_and_custom(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired).fit(b.X_holdout)
    assert bbd.reject_label_ == 10
    np.testing.assert_array_equal(bbd.classes_, np.arange(10))
    bbd = BimodelClassifier(b.backdoored_model, repaired, reject_label=-1).fit(b.X_holdout)
    pred = bbd.predict(b.X_test_triggered)
    assert (pred == -1).any()
    assert set(np.unique(pred)) <= set(range(10)) | {-1}


def test_user_models_unchanged(digits_bench, repaired):
    b = digits_bench
    with watch(b.backdoored_model, repaired, b.X_test) as w:
        BimodelClassifier(b.backdoored_model, repaired).fit(b.X_holdout).predict(b.X_test)
    w.assert_unchanged()


def test_black_box_estimators_and_string_classes():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = np.where(X[:, 0] > 0, "cat", "dog")
    first = LogisticRegression().fit(X, y)
    second = LogisticRegression().fit(X[:, ::-1] * 0 + X, np.where(X[:, 1] > 0, "cat", "dog"))
    bbd = BimodelClassifier(first, second, target_labels=["cat"]).fit(X, y)
    assert bbd.reject_label_ == "rejected"
    pred = bbd.predict(X)
    assert set(np.unique(pred)) <= {"cat", "dog", "rejected"}
    assert (pred == "rejected").any()


def test_clone_keeps_prefit_models_and_works_in_pipeline_and_cv(digits_bench, repaired):
    b = digits_bench
    bbd = BimodelClassifier(b.backdoored_model, repaired, target_labels=[0])
    twin = clone(bbd)
    assert twin.model is b.backdoored_model and twin.repaired_model is repaired
    assert twin.get_params()["target_labels"] == [0]
    flat = FunctionTransformer(lambda X: X.reshape(len(X), 1, 8, 8))
    pipe = Pipeline([("reshape", flat), ("bbd", bbd)])
    X = b.X_test.reshape(len(b.X_test), -1)
    scores = cross_val_score(pipe, X, b.y_test, cv=3)
    assert scores.shape == (3,)
    assert scores.min() >= 0.9


def test_untrained_module_and_skorch_net_mix():
    module = SmallCNN(1, 10)
    net = wrap_module(SmallCNN(1, 10), classes=range(10))
    X = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    bbd = BimodelClassifier(module, net).fit(X)
    assert bbd.predict(X).shape == (8,)


def test_errors():
    X = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    ten, five = SmallCNN(1, 10), SmallCNN(1, 5)
    with raises_naming("repaired_model", match="same classes.*10 classes.*5"):
        BimodelClassifier(ten, five).fit(X)
    with raises_naming("reject_label", match="reject_label=3.*one of the model's classes"):
        BimodelClassifier(ten, SmallCNN(1, 10), reject_label=3).fit(X)
    with raises_naming("target_labels", match="got \\[12\\]"):
        BimodelClassifier(ten, SmallCNN(1, 10), target_labels=[0, 12]).fit(X)
    with pytest.warns(UserWarning, match="target_labels in BimodelClassifier is empty.*every input"):
        empty = BimodelClassifier(ten, SmallCNN(1, 10), target_labels=[]).fit(X)
    assert empty.target_labels_ is None and empty.cross_examine(X[:5]).asked.all()
    with pytest.raises(TypeError, match="BimodelClassifier needs a classifier"):
        BimodelClassifier(object(), ten).fit(X)
    with raises_naming("batch_size"):
        BimodelClassifier(ten, SmallCNN(1, 10), batch_size=0).fit(X)
    with pytest.raises(NotFittedError):
        BimodelClassifier(ten, SmallCNN(1, 10)).predict(X)
    bad = X.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        BimodelClassifier(ten, SmallCNN(1, 10)).fit(X).predict(bad)

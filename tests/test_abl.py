"""Tests for AntiBackdoorLearner (Anti-Backdoor Learning)."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from sklearn.model_selection import cross_val_score

from contracts import check_same_seed_same_result, raises_naming, watch

from backdoorlearn import AntiBackdoorLearner, SmallCNN
from backdoorlearn.datasets import load_digits
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

# ABL trains the benchmark's architecture (bench.module_params), so it is compared
# with the same network trained on clean data (bench.clean_model). The signs get a
# shorter, larger-step budget.
SIGNS_FIT = dict(lr=3e-3, train_batch_size=64, isolation_epochs=10, fine_tune_epochs=12)


def _figures(abl, b):
    ca = clean_accuracy(b.y_test, abl.predict(b.X_test))
    ca_clean = clean_accuracy(b.y_test, b.clean_model.predict(b.X_test))
    asr = attack_success_rate(b.y_test, abl.predict(b.X_test_triggered), b.target_label)
    precision = float(np.mean(b.poison_mask[abl.isolated_indices_]))
    return ca, ca_clean, asr, precision


@pytest.fixture(scope="module")
def tiny():
    X, y = load_digits()
    return X[:300], y[:300]


def _fast(**kw):
    params = dict(isolation_epochs=1, fine_tune_epochs=1, unlearning_epochs=1, random_state=0)
    params.update(kw)
    return AntiBackdoorLearner(SmallCNN, **params)


# ---------------------------------------------------------------- quality
@pytest.fixture(scope="module")
def digits_abl(digits_bench):
    b = digits_bench
    return AntiBackdoorLearner(SmallCNN, module_params=b.module_params, random_state=0).fit(b.X_train, b.y_train)


@pytest.mark.slow
def test_digits_badnets_targets(digits_bench, digits_abl):
    ca, ca_clean, asr, precision = _figures(digits_abl, digits_bench)
    assert precision >= 0.9
    assert asr <= 0.10
    assert ca >= ca_clean - 0.03
    assert len(digits_abl.isolated_indices_) == int(np.ceil(0.01 * len(digits_bench.X_train)))


@pytest.fixture(scope="module")
def signs_abl(signs_bench):
    b = signs_bench
    return AntiBackdoorLearner(SmallCNN, module_params=b.module_params, random_state=0, **SIGNS_FIT).fit(
        b.X_train, b.y_train)


@pytest.mark.slow
def test_signs_badnets_isolation_and_accuracy(signs_bench, signs_abl):
    ca, ca_clean, _, precision = _figures(signs_abl, signs_bench)
    assert precision >= 0.9
    assert ca >= ca_clean - 0.03


@pytest.mark.slow
def test_signs_badnets_attack_success(signs_bench, signs_abl):
    _, _, asr, _ = _figures(signs_abl, signs_bench)
    assert asr <= 0.10


@pytest.mark.slow
@pytest.mark.parametrize("dataset, seed", [("digits", 1), ("digits", 2), ("digits", 3),
                                           ("digits", 4), ("signs", 1), ("signs", 3)])
def test_badnets_seed_sweep(benchmark_factory, dataset, seed):
    b = benchmark_factory(dataset, random_state=seed)
    fit = {} if dataset == "digits" else SIGNS_FIT
    abl = AntiBackdoorLearner(SmallCNN, module_params=b.module_params, random_state=0, **fit).fit(b.X_train,
                                                                                                b.y_train)
    ca, ca_clean, asr, precision = _figures(abl, b)
    assert precision >= 0.9
    assert asr <= 0.10
    assert ca >= ca_clean - 0.03


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: isolation precision >= 90%, ASR <= 10% on the digits blend attack; "
    "benchmarks/results/bbd_abl.txt, ABL digits 'blend' row"))
def test_digits_blend_targets(benchmark_factory):
    b = benchmark_factory("digits", attack="blend", random_state=0)
    abl = AntiBackdoorLearner(SmallCNN, module_params=b.module_params, random_state=0).fit(b.X_train, b.y_train)
    ca, ca_clean, asr, precision = _figures(abl, b)
    assert precision >= 0.9
    assert asr <= 0.10
    assert ca >= ca_clean - 0.03


# ---------------------------------------------------------------- mechanics
@pytest.mark.slow
def test_stages_go_through_skorch_history(digits_abl):
    stages = [row["stage"] for row in digits_abl.history_]
    assert stages == ["isolation"] * 12 + ["fine_tune"] * 30 + ["unlearning"] * 3 + ["recovery"] * 3
    # a plain ImageClassifierNet (a skorch NeuralNetClassifier), not the stage-aware training net
    assert type(digits_abl.model_).__name__ == "ImageClassifierNet"
    assert digits_abl.isolation_losses_.shape == (1224,)
    iso = digits_abl.isolation_losses_[digits_abl.isolated_indices_]
    assert iso.max() <= np.delete(digits_abl.isolation_losses_, digits_abl.isolated_indices_).min()


@pytest.mark.slow
def test_anchor_leaves_out_the_backdoor_rows(digits_bench, digits_abl):
    # The kept rows that resemble the isolated ones (penultimate features) leave
    # the anchor and are unlearned with them; the anchor keeps the clean rows.
    b, abl = digits_bench, digits_abl
    n_isolated = len(abl.isolated_indices_)
    np.testing.assert_array_equal(abl.unlearned_indices_[:n_isolated], abl.isolated_indices_)
    assert len(np.unique(abl.unlearned_indices_)) == len(abl.unlearned_indices_)
    assert not abl.anchor_mask_[abl.unlearned_indices_].any()
    assert abl.anchor_mask_.sum() + len(abl.unlearned_indices_) == len(b.X_train)
    assert b.poison_mask[abl.anchor_mask_].sum() <= 0.05 * b.poison_mask.sum()
    assert (~b.poison_mask & ~abl.anchor_mask_).sum() <= 0.01 * len(b.X_train)


def test_recovery_epochs(tiny):
    X, y = tiny
    abl = _fast(recovery_epochs=0).fit(X, y)
    assert [row["stage"] for row in abl.history_] == ["isolation", "fine_tune", "unlearning"]
    with pytest.raises(ValueError, match="recovery_epochs"):
        _fast(recovery_epochs=-1).fit(X, y)


def test_classifier_api(tiny):
    X, y = tiny
    abl = _fast().fit(X, y)
    proba = abl.predict_proba(X[:7])
    assert proba.shape == (7, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(abl.predict(X[:7]), proba.argmax(axis=1))
    assert abl.score(X, y) == accuracy_score(y, abl.predict(X))
    assert abl.input_shape_ == (1, 8, 8)
    np.testing.assert_array_equal(abl.classes_, np.arange(10))


def test_labels_not_starting_at_zero(tiny):
    X, y = tiny
    abl = _fast().fit(X, y + 5)
    np.testing.assert_array_equal(abl.classes_, np.arange(5, 15))
    assert set(np.unique(abl.predict(X))) <= set(range(5, 15))


def test_repeatable_and_global_rng_untouched(tiny):
    X, y = tiny
    check_same_seed_same_result(_fast(), lambda est: est.fit(X, y),
                                lambda est: (est.isolated_indices_, est.predict_proba(X)))


def test_module_instance_is_copied_not_changed(tiny):
    X, y = tiny
    module = SmallCNN(1, 10)
    with watch(module, X, y) as w:
        abl = AntiBackdoorLearner(module, isolation_epochs=1, fine_tune_epochs=1, unlearning_epochs=1,
                                  random_state=0).fit(X, y)
    w.assert_unchanged()
    assert abl.model_.module_ is not module


def test_clone_and_cross_val_score(tiny):
    X, y = tiny
    abl = _fast(isolation_ratio=0.02)
    assert clone(abl).get_params()["isolation_ratio"] == 0.02
    scores = cross_val_score(abl, X, y, cv=2)
    assert scores.shape == (2,)


def test_errors(tiny):
    X, y = tiny
    for ratio in (0, 1, 1.5, -0.1):
        with raises_naming("isolation_ratio"):
            _fast(isolation_ratio=ratio).fit(X, y)
    with raises_naming("isolation_ratio", match="more training samples"):
        _fast(isolation_ratio=0.5).fit(X[:12], y[:12])
    with pytest.raises(ValueError, match="at least 2 sample"):
        _fast().fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        _fast().fit(X[y == 3], y[y == 3])
    with raises_naming("module", TypeError, match="module must be a torch.nn.Module"):
        AntiBackdoorLearner("SmallCNN").fit(X, y)
    with raises_naming("module", match="logits of shape \\(n_samples, 10\\)"):
        AntiBackdoorLearner(SmallCNN(1, 4), isolation_epochs=1).fit(X, y)
    with raises_naming("module_params", match="module_params only applies"):
        AntiBackdoorLearner(SmallCNN(1, 10), module_params={"hidden": 8}).fit(X, y)
    with raises_naming("y", match="one label per sample"):
        _fast().fit(X, y[:-1])
    with raises_naming("gamma"):
        _fast(gamma=-1).fit(X, y)
    with raises_naming("train_batch_size"):
        _fast(train_batch_size=0).fit(X, y)
    with pytest.raises(NotFittedError):
        _fast().predict(X)
    abl = _fast().fit(X, y)
    with pytest.raises(ValueError, match="images of shape \\(1, 8, 8\\)"):
        abl.predict(np.zeros((2, 1, 9, 9), dtype=np.float32))

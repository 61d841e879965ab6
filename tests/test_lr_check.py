"""The learning-rate check of the fine-tuning repairs: held-out rows, McNemar's test, a lower rate."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from contracts import raises_naming

from backdoorlearn import FinePruner, RepairWarning, Trigger, Unlearner
from backdoorlearn.repair._base import LR_STEPS, checked_learning_rate


class _Lookup(nn.Module):
    """Answers the label written in pixel 0, except on the rows whose id (pixel 1) is in ``wrong``."""

    def __init__(self, wrong=()):
        super().__init__()
        self.wrong = torch.as_tensor(sorted(wrong), dtype=torch.long)

    def forward(self, x):
        flat = x.reshape(len(x), -1)
        label = torch.round(flat[:, 0] * 10).long()
        ids = torch.round(flat[:, 1] * 1000).long()
        label = torch.where(torch.isin(ids, self.wrong), (label + 1) % 10, label)
        return nn.functional.one_hot(label, 10).float() * 10


def _data(n=200):
    y = np.arange(n) % 10
    X = np.zeros((n, 1, 2, 2), dtype=np.float32)
    X[:, 0, 0, 0] = y / 10
    X[:, 0, 0, 1] = np.arange(n) / 1000
    return X, y


def _reference(X):
    return _Lookup()(torch.as_tensor(X)).argmax(1).numpy()


def _check(n_wrong, X, y, fraction=0.2, tolerance=0.04):
    """checked_learning_rate with trial models wrong on ``n_wrong(lr)`` of the held-out rows."""
    calls = []

    def train(rows, lr, seed):
        calls.append((len(rows), lr))
        held_out = np.setdiff1d(np.arange(len(X)), rows)
        return _Lookup(held_out[:n_wrong(lr)].tolist())

    lr, search = checked_learning_rate(train, _reference, X, y, lr=1.0, fraction=fraction,
                                       tolerance=tolerance, seed=0)
    return lr, search, calls


def test_first_rate_kept_when_it_keeps_accuracy():
    X, y = _data()
    lr, search, calls = _check(lambda lr: 0, X, y)
    assert lr == 1.0 and search.passed
    assert calls == [(160, 1.0)]  # trained on all but the 20% held out, once
    assert search.n_validation == 40 and search.reference_accuracy == 1.0


def test_lower_rate_kept_after_a_loss():
    X, y = _data()
    lr, search, calls = _check(lambda lr: 20 if lr > 0.5 else 0, X, y)
    assert lr == pytest.approx(LR_STEPS[1]) and search.passed
    np.testing.assert_allclose(search.lr, [1.0, LR_STEPS[1]])
    assert search.validation_accuracy[0] < 0.7 and search.validation_accuracy[1] == 1.0


def test_best_rate_kept_and_reported_when_every_rate_loses():
    X, y = _data()
    lr, search, _ = _check(lambda lr: int(8 + 20 * lr), X, y)  # the lowest rate loses least
    assert not search.passed
    assert len(search.lr) == len(LR_STEPS)
    assert lr == pytest.approx(LR_STEPS[-1])
    assert search.validation_accuracy.argmax() == len(LR_STEPS) - 1


def test_a_loss_within_the_noise_of_few_rows_is_not_counted():
    # 40 held-out rows: a loss of 2 rows (5 points, over the 4-point tolerance) is within
    # McNemar's noise; a loss of 10 rows is not.
    X, y = _data()
    lr, search, _ = _check(lambda lr: 2 if lr == 1.0 else 0, X, y)
    assert search.validation_accuracy[0] == pytest.approx(0.95)
    assert lr == 1.0 and search.passed
    lr, search, _ = _check(lambda lr: 10 if lr == 1.0 else 0, X, y)
    assert lr < 1.0 and search.passed


def test_check_skipped_without_rows_to_hold_out():
    X, y = _data(n=10)  # one image per class: none can be held out
    lr, search, calls = _check(lambda lr: 30, X, y)
    assert (lr, search, calls) == (1.0, None, [])
    X, y = _data()
    assert _check(lambda lr: 0.9, X, y, fraction=0)[1:] == (None, [])


def test_every_class_keeps_training_rows():
    X, y = _data(n=24)  # 2 or 3 images per class
    _, search, calls = _check(lambda lr: 0, X, y, fraction=0.5)
    assert calls[0][0] + search.n_validation == 24 and calls[0][0] >= 10


@pytest.fixture(scope="module")
def small_run(digits_bench):
    b = digits_bench
    return b.backdoored_model, b.X_holdout, b.y_holdout


def test_fine_pruner_records_the_check(small_run):
    model, X, y = small_run
    fp = FinePruner(prune_ratio=0.25, fine_tune_epochs=2, random_state=0).fit(model, X, y)
    assert fp.lr_ in fp.lr_search_.lr and fp.lr_search_.lr[0] == fp.lr
    assert fp.lr_search_.n_validation == pytest.approx(0.2 * len(X), abs=10)
    off = FinePruner(prune_ratio=0.25, fine_tune_epochs=2, random_state=0, validation_fraction=0,
                     lr=fp.lr_).fit(model, X, y)
    assert off.lr_search_ is None and off.lr_ == off.lr
    # the check draws nothing from the repair's random state: the repaired model is the
    # fine-tuning on all of X at the rate kept, as without the check
    for a, b in zip(fp.repaired_model_.module_.state_dict().values(),
                    off.repaired_model_.module_.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_a_rate_that_wrecks_the_model_is_lowered_or_reported(small_run):
    model, X, y = small_run
    with pytest.warns(RepairWarning, match="at each learning rate tried"):
        fp = FinePruner(prune_ratio=0.25, fine_tune_epochs=3, lr=1e3, random_state=0).fit(model, X, y)
    assert not fp.repair_ok_ and not fp.lr_search_.passed
    assert fp.lr_ in fp.lr_search_.lr
    unl = Unlearner(Trigger.patch(X.shape[1:], size=2), fine_tune_epochs=3, lr=3.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RepairWarning)
        unl.fit(model, X, y)
    assert unl.lr_search_.lr[0] == 3.0 and len(unl.lr_search_.lr) > 1
    assert unl.lr_ < 3.0 or not unl.repair_ok_


def test_validation_fraction_errors(small_run):
    model, X, y = small_run
    for cls, args in ((FinePruner, ()), (Unlearner, (Trigger.patch(X.shape[1:], size=2),))):
        for bad in (-0.1, 0.6):
            with raises_naming("validation_fraction"):
                cls(*args, validation_fraction=bad).fit(model, X, y)

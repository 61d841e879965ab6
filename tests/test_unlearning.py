"""Unlearner: Neural Cleanse §VI-C unlearning on the embedded benchmarks."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from contracts import check_same_seed_same_result, raises_naming, watch

from backdoorlearn import NeuralCleanse, Trigger, Unlearner
from backdoorlearn.metrics import attack_success_rate, clean_accuracy
from backdoorlearn.models import model_fingerprint


def _scores(model, bench):
    return (clean_accuracy(bench.y_test, model.predict(bench.X_test)),
            attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), bench.target_label))


def _check_target(unlearner, bench):
    acc0, _ = _scores(bench.backdoored_model, bench)
    acc, asr = _scores(unlearner.repaired_model_, bench)
    assert asr <= 0.05, f"attack success {asr:.3f}"
    assert acc0 - acc <= 0.03, f"clean accuracy {acc0:.3f} -> {acc:.3f}"


@pytest.mark.parametrize("dataset", ["digits", "signs"])
def test_unlearning_true_trigger(dataset, benchmark_factory):
    b = benchmark_factory(dataset)
    with watch(b.backdoored_model, b.X_holdout) as w:
        u = Unlearner(b.trigger, random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    w.assert_unchanged()
    assert u.stamped_mask_.sum() == round(0.2 * len(b.X_holdout))
    _check_target(u, b)


class _FakeCleanse:
    """Duck-typed NeuralCleanse result."""

    def __init__(self, triggers, flagged):
        self.reversed_triggers_ = triggers
        self.flagged_labels_ = flagged


def test_unlearning_with_neural_cleanse_digits(digits_bench):
    b = digits_bench
    nc = NeuralCleanse(random_state=0).fit(b.backdoored_model, b.X_holdout)
    assert b.target_label in nc.flagged_labels_
    u = Unlearner(nc, random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert u.target_labels_ == list(nc.flagged_labels_)
    _check_target(u, b)


@pytest.mark.slow
def test_unlearning_with_neural_cleanse_signs(signs_bench):
    b = signs_bench
    nc = NeuralCleanse(random_state=0).fit(b.backdoored_model, b.X_holdout)
    assert b.target_label in nc.flagged_labels_
    u = Unlearner(nc, random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    _check_target(u, b)


#: The plain fine-tuning of earlier versions: constant-rate AdamW, no smoothing, augmentation or decay.
PLAIN = dict(fine_tune_epochs=20, lr=5e-3, lr_schedule="constant", label_smoothing=0.0, max_shift=0, noise_std=0.0,
             weight_decay=0.0)


def test_clean_only_fine_tuning_leaves_backdoor(digits_bench):
    # The paper's comparison: plain fine-tuning on the same data without the trigger does not unlearn BadNets.
    b = digits_bench
    u = Unlearner(b.trigger, stamp_fraction=0.0, random_state=0, **PLAIN).fit(b.backdoored_model, b.X_holdout,
                                                                               b.y_holdout)
    assert not u.stamped_mask_.any()
    _, asr = _scores(u.repaired_model_, b)
    assert asr >= 0.5
    # ... while the same plain fine-tuning with the trigger stamped does
    u = Unlearner(b.trigger, random_state=0, **PLAIN).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    _check_target(u, b)


def test_recipe_parameters_reach_the_fine_tuning(digits_bench):
    # each regularizer of the recipe changes the result, so none of them is silently dropped
    b = digits_bench
    base = dict(fine_tune_epochs=2, validation_fraction=0.0, random_state=0)
    ref = model_fingerprint(Unlearner(b.trigger, **base).fit(b.backdoored_model, b.X_holdout,
                                                             b.y_holdout).repaired_model_)
    for change in (dict(lr_schedule="constant"), dict(label_smoothing=0.0), dict(max_shift=0, noise_std=0.0),
                   dict(weight_decay=0.0)):
        u = Unlearner(b.trigger, **base, **change).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
        assert model_fingerprint(u.repaired_model_) != ref, change


def test_duck_typed_cleanse_and_empty(digits_bench):
    b = digits_bench
    u = Unlearner(_FakeCleanse({0: b.trigger, 3: b.trigger}, [0]), fine_tune_epochs=1, random_state=0)
    u.fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert u.target_labels_ == [0] and u.triggers_[0] is b.trigger
    # what a NeuralCleanse that flagged nothing leads to: tests/test_pipeline.py


def test_several_triggers_split_the_stamps(digits_bench):
    b = digits_bench
    other = Trigger.patch((1, 8, 8), size=2, location="top-left")
    u = Unlearner([b.trigger, other], stamp_fraction=0.5, fine_tune_epochs=1, random_state=0)
    u.fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert u.stamped_mask_.sum() == round(0.5 * len(b.X_holdout))
    assert len(u.triggers_) == 2


def test_same_random_state_same_model(digits_bench):
    b = digits_bench
    check_same_seed_same_result(Unlearner(b.trigger, fine_tune_epochs=2, random_state=1),
                                lambda est: est.fit(b.backdoored_model, b.X_holdout, b.y_holdout),
                                lambda est: (model_fingerprint(est.repaired_model_), est.stamped_mask_))


def test_errors(digits_bench):
    b = digits_bench
    m, X, y = b.backdoored_model, b.X_holdout, b.y_holdout
    with raises_naming("y", match="y in Unlearner is required"):
        Unlearner(b.trigger).fit(m, X, None)
    with raises_naming("triggers", TypeError, match="triggers in Unlearner must be"):
        Unlearner("square").fit(m, X, y)
    with raises_naming("triggers", match="NeuralCleanse that is not fitted"):
        Unlearner(NeuralCleanse()).fit(m, X, y)
    with raises_naming("triggers", match="must fit images of shape"):
        Unlearner(Trigger.patch((3, 32, 32), size=4)).fit(m, X, y)
    black_box = LogisticRegression(max_iter=50).fit(X.reshape(len(X), -1), y)
    with pytest.raises(TypeError, match="Unlearner needs a white-box model"):
        Unlearner(b.trigger).fit(black_box, X, y)
    with raises_naming("stamp_fraction"):
        Unlearner(b.trigger, stamp_fraction=1.5).fit(m, X, y)
    with raises_naming("fine_tune_epochs"):
        Unlearner(b.trigger, fine_tune_epochs=-1).fit(m, X, y)
    for bad in (dict(lr_schedule="step"), dict(label_smoothing=1.0), dict(max_shift=-1), dict(noise_std=-0.1),
                dict(noise_prob=1.5), dict(weight_decay=-1.0)):
        with raises_naming(next(iter(bad))):
            Unlearner(b.trigger, **bad).fit(m, X, y)
    with raises_naming("X", match="NaN"):
        Xn = X.copy(); Xn[0, 0, 0, 0] = np.nan
        Unlearner(b.trigger).fit(m, Xn, y)

"""The pipeline the user guide recommends, as a user runs it: NeuralCleanse feeds the other defenses.

No ground truth enters a defense here: every downstream tool gets the fitted
``NeuralCleanse`` of the same model and the defender's clean images; the benchmark's
trigger and target only score the result. Also: what each tool does when the
NeuralCleanse flagged nothing (the model looked clean).
"""

import warnings

import numpy as np
import pytest
from conftest import shared_result

from backdoorlearn import (ActivationFilter, BimodelClassifier, FinePruner, NeuralCleanse, NeuronPruner,
                           Unlearner)
from backdoorlearn.metrics import attack_success_rate, clean_accuracy
from backdoorlearn.models import model_fingerprint


def _nc(bench, which="backdoored_model"):
    return shared_result(("pipeline nc", which),
                         lambda: NeuralCleanse(random_state=0).fit(bench[which], bench.X_holdout, bench.y_holdout))


def _scores(model, b):
    return (clean_accuracy(b.y_test, model.predict(b.X_test)),
            attack_success_rate(b.y_test, model.predict(b.X_test_triggered), b.target_label))


def test_neural_cleanse_feeds_the_repairs_and_filters(digits_bench):
    b = digits_bench
    nc = _nc(b)
    assert b.target_label in nc.flagged_labels_  # scoring only: the defenses below get nc, not the label
    acc0, _ = _scores(b.backdoored_model, b)
    before = model_fingerprint(b.backdoored_model)

    u = Unlearner(nc, random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    acc, asr = _scores(u.repaired_model_, b)
    assert asr <= 0.05 and acc0 - acc <= 0.03, (acc0, acc, asr)
    assert u.n_triggers_ == len(nc.flagged_labels_) and u.fallback_ is None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the budget may stop it: its figures are scored
        p = NeuronPruner(nc).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    acc, asr = _scores(p.repaired_model_, b)
    assert p.accuracy_before_ - p.accuracy_pruned_ <= p.max_accuracy_drop  # the budget, on X
    # on unseen images the loss can exceed the budget set on ~120 images, but not by much
    assert acc0 - acc <= 0.10, (acc0, acc)
    assert p.target_labels_ == list(nc.flagged_labels_)
    assert p.layer_ in p.layer_candidates_.layer

    filt = ActivationFilter(b.backdoored_model, nc).fit(b.X_holdout)
    fpr = np.mean(filt.predict(b.X_test) == 1)  # 1: flagged
    fnr = np.mean(filt.predict(b.X_test_triggered) == 0)
    assert fpr <= 0.10 and fnr <= 0.10, (fpr, fnr)

    fp = FinePruner(random_state=0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    bbd = BimodelClassifier(b.backdoored_model, fp.repaired_model_, target_labels=nc.flagged_labels_)
    bbd.fit(b.X_holdout, b.y_holdout)
    assert np.mean(bbd.predict(b.X_test) == bbd.reject_label_) <= 0.05
    # triggered inputs of the other labels given the target
    assert attack_success_rate(b.y_test, bbd.predict(b.X_test_triggered), b.target_label) <= 0.02
    assert model_fingerprint(b.backdoored_model) == before


# ---------------------------------------------------------------- NeuralCleanse flagged nothing
@pytest.fixture(scope="module")
def clean_nc(digits_bench):
    nc = _nc(digits_bench, "clean_model")
    assert not nc.flagged_labels_, nc.flagged_labels_  # the clean model looks clean: the case under test
    return nc


@pytest.mark.parametrize("repair", [Unlearner, NeuronPruner])
def test_repair_fed_nothing_returns_the_model_unchanged_with_a_warning(repair, digits_bench, clean_nc):
    b = digits_bench
    with pytest.warns(UserWarning, match=f"{repair.__name__}: the NeuralCleanse given as triggers flagged no label"):
        r = repair(clean_nc, no_trigger="warn").fit(b.clean_model, b.X_holdout, b.y_holdout)
    assert r.n_triggers_ == 0 and r.fallback_ is None and r.repair_ok_
    assert model_fingerprint(r.repaired_model_) == model_fingerprint(b.clean_model)
    assert r.repaired_model_ is not b.clean_model


@pytest.mark.parametrize("repair", [Unlearner, NeuronPruner])
def test_repair_fed_nothing_can_fall_back_to_fine_pruning(repair, digits_bench, clean_nc):
    b = digits_bench
    # Unlearner's default; NeuronPruner, without a random_state for the fallback, defaults to "warn"
    assert repair(clean_nc).no_trigger == ("fine-prune" if repair is Unlearner else "warn")
    with pytest.warns(UserWarning, match="repairing with FinePruner"):
        r = repair(clean_nc, no_trigger="fine-prune").fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert isinstance(r.fallback_, FinePruner) and r.fallback_.prune_ratio_ > 0
    # the fallback removes the backdoor the inspection missed (here: the clean model's NC on the infected one)
    acc0, _ = _scores(b.backdoored_model, b)
    acc, asr = _scores(r.repaired_model_, b)
    assert asr <= 0.10 and acc0 - acc <= 0.05, (acc0, acc, asr)
    with pytest.raises(ValueError, match="triggers in .*flagged no label.*no_trigger='raise'"):
        repair(clean_nc, no_trigger="raise").fit(b.backdoored_model, b.X_holdout, b.y_holdout)


def test_filter_and_bbd_fed_nothing(digits_bench, clean_nc):
    b = digits_bench
    with pytest.warns(UserWarning, match="ActivationFilter: the NeuralCleanse .* flagged no label; the filter flags no"):
        filt = ActivationFilter(b.clean_model, clean_nc).fit(b.X_holdout)
    assert filt.triggers_ == [] and not filt.predict(b.X_test).any()
    with pytest.raises(ValueError, match="triggers in ActivationFilter.*flagged no label.*no_trigger='raise'"):
        ActivationFilter(b.clean_model, clean_nc, no_trigger="raise").fit(b.X_holdout)
    fp = FinePruner(random_state=0).fit(b.clean_model, b.X_holdout, b.y_holdout)
    with pytest.warns(UserWarning, match="every input is cross-examined"):
        bbd = BimodelClassifier(b.clean_model, fp.repaired_model_, target_labels=clean_nc.flagged_labels_)
        bbd.fit(b.X_holdout, b.y_holdout)
    assert bbd.target_labels_ is None and bbd.cross_examine(b.X_test[:20]).asked.all()

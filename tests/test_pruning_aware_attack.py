"""PruningAwareAttack (Liu et al., RAID 2018, §4): defeats pruning alone, not fine-pruning."""

import numpy as np
import pytest
import torch

from contracts import raises_naming, watch

from backdoorlearn import FinePruner, PruningAwareAttack, SmallCNN, Trigger
from backdoorlearn.attacks import PruningAwareAttack as FromAttacks
from backdoorlearn.metrics import attack_success_rate, clean_accuracy


def _scores(model, bench):
    return (clean_accuracy(bench.y_test, model.predict(bench.X_test)),
            attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), bench.target_label))


@pytest.fixture(scope="module")
def digits_attack_run(digits_bench):
    b = digits_bench
    keep = ~b.poison_mask  # the attacker's clean training set
    X, y = b.X_train[keep], b.y_train[keep]
    module = SmallCNN(1, 10, pooled_size=4)
    with watch(module, X, y) as w:
        attack = PruningAwareAttack(b.trigger, target_label=b.target_label, module=module,
                                    random_state=0).fit(X, y)
    return attack, w


@pytest.fixture(scope="module")
def digits_attack(digits_attack_run):
    return digits_attack_run[0]


def test_fit_leaves_module_and_data_unchanged(digits_attack_run):
    digits_attack_run[1].assert_unchanged()


def test_attack_is_a_working_backdoor(digits_attack, digits_bench):
    acc, asr = _scores(digits_attack.backdoored_model_, digits_bench)
    assert acc >= 0.93 and asr >= 0.9
    assert FromAttacks is PruningAwareAttack
    # the decoys are reinstated with their clean weights
    w = digits_attack.backdoored_model_.module_.conv2.weight[digits_attack.pruned_units_]
    w0 = digits_attack.clean_model_.module_.conv2.weight[digits_attack.pruned_units_]
    assert torch.equal(w, w0) and torch.count_nonzero(w) > 0
    assert digits_attack.poisoner_.n_poisoned_ == round(0.1 * len(digits_attack.poisoner_.poison_mask_))


@pytest.mark.slow
def test_pruning_alone_is_defeated_fine_pruning_is_not(digits_attack, digits_bench):
    b = digits_bench
    model = digits_attack.backdoored_model_
    pruned = FinePruner(fine_tune_epochs=0, random_state=0).fit(model, b.X_holdout, b.y_holdout)
    # the defender prunes the decoys first
    decoys = set(digits_attack.pruned_units_.tolist())
    first = pruned.pruned_units_[: len(decoys)].tolist()
    assert set(first) <= decoys
    _check_defeats_pruning_only(model, b)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_fine_pruning_defeats_the_attack_trained_with_other_seeds(digits_bench, seed):
    b = digits_bench
    keep = ~b.poison_mask
    attack = PruningAwareAttack(b.trigger, target_label=b.target_label, module=SmallCNN(1, 10, pooled_size=4),
                                random_state=seed).fit(b.X_train[keep], b.y_train[keep])
    _check_defeats_pruning_only(attack.backdoored_model_, b)


def _check_defeats_pruning_only(model, b):
    pruned = FinePruner(fine_tune_epochs=0, random_state=0).fit(model, b.X_holdout, b.y_holdout)
    _, asr_pruned = _scores(pruned.repaired_model_, b)
    assert asr_pruned >= 0.75, f"pruning alone: attack success {asr_pruned:.3f}"
    fine = FinePruner(random_state=0).fit(model, b.X_holdout, b.y_holdout)
    _, asr_fine = _scores(fine.repaired_model_, b)
    assert asr_fine <= 0.10, f"fine-pruning: attack success {asr_fine:.3f}"


@pytest.mark.slow
def test_pruning_aware_attack_signs(signs_bench):
    b = signs_bench
    keep = ~b.poison_mask
    attack = PruningAwareAttack(b.trigger, target_label=b.target_label,
                                module=SmallCNN(3, 10, channels=(16, 32, 32)), clean_epochs=12,
                                poison_epochs=12, lr=3e-3, random_state=0).fit(b.X_train[keep], b.y_train[keep])
    _, asr = _scores(attack.backdoored_model_, b)
    assert asr >= 0.9
    _check_defeats_pruning_only(attack.backdoored_model_, b)


def test_errors():
    X = np.zeros((20, 1, 8, 8), np.float32)
    y = np.arange(20) % 2
    t = Trigger.patch((1, 8, 8), size=2)
    with raises_naming("prune_ratio"):
        PruningAwareAttack(t, prune_ratio=1.0).fit(X, y)
    with raises_naming("target_label", match="target_label in PruningAwareAttack"):
        PruningAwareAttack(t, target_label=5, clean_epochs=1, poison_epochs=1).fit(X, y)
    with raises_naming("layer", match="layer='classifier' must name a convolution"):
        PruningAwareAttack(t, layer="classifier", clean_epochs=1, poison_epochs=1).fit(X, y)
    with raises_naming("y", match="y in PruningAwareAttack is required"):
        PruningAwareAttack(t).fit(X, None)

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

from backdoorlearn import metrics as M


def test_attack_success_ignores_target_class_rows():
    assert M.attack_success_rate([0, 0, 1, 2], [0, 1, 0, 2], target_label=0) == 0.5


def test_attack_success_per_row_targets():
    y_true = np.array([1, 2, 3, 4])
    y_pred = np.array([5, 2, 9, 9])
    assert M.attack_success_rate(y_true, y_pred, target_label=[5, 5, 9, 9]) == 0.75


def test_robust_accuracy():
    assert M.robust_accuracy([1, 2, 3, 0], [1, 0, 3, 0], target_label=0) == pytest.approx(2 / 3)
    assert M.robust_accuracy([1, 2, 3, 0], [1, 0, 3, 0]) == 0.75


def test_frr_far_definitions():
    y = [0, 0, 0, 0, 1, 1]
    pred = [1, 0, 0, 0, 0, 1]
    assert M.false_rejection_rate(y, pred) == 0.25
    assert M.false_acceptance_rate(y, pred) == 0.5


def test_der_sign_convention():
    # ASR 100% -> 0%, accuracy unchanged: 1.0; doing nothing: 0.5; an accuracy *gain* is not rewarded.
    assert M.defense_effectiveness_rate(1.0, 0.0, 0.9, 0.9) == 1.0
    assert M.defense_effectiveness_rate(0.9, 0.9, 0.9, 0.9) == 0.5
    assert M.defense_effectiveness_rate(0.5, 0.6, 0.8, 0.9) == 0.5
    assert M.defense_effectiveness_rate(1.0, 0.2, 0.9, 0.7) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: M.clean_accuracy([0, 1], [0]), "same length"),
        (lambda: M.clean_accuracy([], []), "empty"),
        (lambda: M.attack_success_rate([0, 0], [0, 0], 0), "target label"),
        (lambda: M.false_rejection_rate([1, 1], [0, 1]), "benign"),
        (lambda: M.false_acceptance_rate([0, 0], [0, 1]), "trojaned"),
        (lambda: M.false_rejection_rate([0, 2], [0, 1]), "0 \\(benign\\)"),
        (lambda: M.defense_effectiveness_rate(1.2, 0, 1, 1), "asr_before"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_scorers_in_grid_search(rng):
    X = rng.random((60, 4))
    y = (X[:, 0] > 0.5).astype(int)
    gs = GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [1, 2]},
                      scoring={"frr": M.FRR_SCORER, "far": M.FAR_SCORER}, refit="far", cv=3)
    gs.fit(X, y)
    assert gs.best_score_ <= 0  # negated rates
    scorer = M.make_attack_success_scorer(target_label=1)
    assert scorer(gs.best_estimator_, X[y == 0], y[y == 0]) <= 0

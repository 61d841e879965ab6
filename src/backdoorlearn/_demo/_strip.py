"""Demo step: STRIP screens the test inputs of the backdoored and of the clean model."""

from ..detection import STRIPDetector
from ..ensemble import GuardedClassifier
from ..metrics import (
    attack_success_rate,
    clean_accuracy,
    false_acceptance_rate,
    false_rejection_rate,
)


def strip_rows(bench, *, verbose=0):
    """STRIP (N=100, 1% FRR learned on the clean hold-out) in front of each model.

    "clean accuracy" and "attack success" are those of the guarded model
    (a rejected input gets label N+1, so it is neither right nor the target);
    the detail gives STRIP's FRR on the clean test set and FAR on the
    triggered one.
    """
    rows = []
    for name in ("backdoored_model", "clean_model"):
        model = bench[name]
        detector = STRIPDetector(model, false_rejection_rate=0.01, random_state=0, verbose=verbose)
        guard = GuardedClassifier(model, detector).fit(bench.X_holdout)
        pred_clean, pred_trig = guard.predict(bench.X_test), guard.predict(bench.X_test_triggered)
        flagged_clean = (pred_clean == guard.reject_label_).astype(int)
        flagged_trig = (pred_trig == guard.reject_label_).astype(int)
        frr = false_rejection_rate([0] * len(flagged_clean), flagged_clean)
        far = false_acceptance_rate([1] * len(flagged_trig), flagged_trig)
        rows.append({
            "step": f"STRIP guard, {name.replace('_', ' ')}",
            "clean accuracy": clean_accuracy(bench.y_test, pred_clean),
            "attack success": attack_success_rate(bench.y_test, pred_trig, bench.target_label),
            "detail": f"FRR {100 * frr:.1f}% (clean test), FAR {100 * far:.1f}% (triggered test)",
        })
    return rows

"""Demo step: BimodelClassifier, the backdoored and a fine-pruned model cross-examining."""

import numpy as np

from ..ensemble import BimodelClassifier
from ..metrics import attack_success_rate, clean_accuracy, false_rejection_rate
from ..repair import FinePruner
from ._neural_cleanse import fitted_neural_cleanse


def bimodel_rows(bench, *, verbose=0):
    pruner = FinePruner(random_state=0, verbose=verbose)
    repaired = pruner.fit(bench.backdoored_model, bench.X_holdout, bench.y_holdout).repaired_model_
    nc = fitted_neural_cleanse(bench, verbose=verbose)  # targeted mode's targets: the labels it flags
    rows = []
    for mode, targets in (("targeted", nc.flagged_labels_), ("untargeted", None)):
        bbd = BimodelClassifier(bench.backdoored_model, repaired, target_labels=targets)
        bbd.fit(bench.X_holdout, bench.y_holdout)
        clean = bbd.cross_examine(bench.X_test)
        pred_clean, asked = clean.y_pred, float(clean.asked.mean())
        pred_trig = bbd.predict(bench.X_test_triggered)
        rejected = (pred_clean == bbd.reject_label_).astype(int)
        frr = false_rejection_rate(np.zeros_like(rejected), rejected)
        trig_rejected = float(np.mean(pred_trig == bbd.reject_label_))
        rows.append({
            "step": f"BBD {mode} (+ fine-pruned)",
            "clean accuracy": clean_accuracy(bench.y_test, pred_clean),
            "attack success": attack_success_rate(bench.y_test, pred_trig, bench.target_label),
            "detail": (f"clean rejected {100 * frr:.1f}%, triggered rejected "
                       f"{100 * trig_rejected:.1f}%, 2nd model on {100 * asked:.0f}% of clean"),
        })
    return rows

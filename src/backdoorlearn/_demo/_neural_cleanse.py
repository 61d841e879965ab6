"""Demo step: Neural Cleanse inspects the clean and the backdoored model."""

from ..inspection import NeuralCleanse
from ..metrics import attack_success_rate


def neural_cleanse_rows(bench, *, verbose=0):
    """Anomaly index of each model (flagged when > 2) and the flagged label.

    "attack success" is that of the reversed trigger of the smallest-norm
    label on the clean test set (the defender's reconstruction of the
    backdoor); the detail gives the anomaly index and the flagged labels.
    """
    rows = []
    for name in ("backdoored_model", "clean_model"):
        model = bench[name]
        nc = NeuralCleanse(random_state=0, verbose=verbose).fit(model, bench.X_holdout, bench.y_holdout)
        label = int(nc.labels_[nc.l1_norms_.argmin()])
        pred = model.predict(nc.reversed_triggers_[label].apply(bench.X_test))
        flagged = ", ".join(map(str, nc.flagged_labels_)) or "none"
        rows.append({
            "step": f"Neural Cleanse, {name.replace('_', ' ')}",
            "clean accuracy": None,
            "attack success": attack_success_rate(bench.y_test, pred, label),
            "detail": (f"anomaly index {nc.anomaly_index_:.2f} (label {label}, L1 "
                       f"{nc.l1_norms_.min():.1f}); flagged: {flagged} (true target "
                       f"{bench.target_label})"),
        })
    return rows

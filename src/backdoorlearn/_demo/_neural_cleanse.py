"""Demo step: Neural Cleanse inspects the clean and the backdoored model."""

from ..inspection import NeuralCleanse
from ..metrics import attack_success_rate

# id(bench) -> (bench, {model name: fitted NeuralCleanse}): the later steps reuse the inspection
_FITTED = {}


def fitted_neural_cleanse(bench, name="backdoored_model", *, verbose=0):
    """``NeuralCleanse(random_state=0)`` fitted on ``bench[name]`` and the hold-out, once per benchmark.

    The demo's repairs, filter and BBD get this, as a user would: the inspection of the
    same model, never the benchmark's trigger or target.
    """
    held, fitted = _FITTED.get(id(bench), (None, None))
    if held is not bench:
        fitted = {}
        _FITTED.clear()
        _FITTED[id(bench)] = (bench, fitted)
    if name not in fitted:
        fitted[name] = NeuralCleanse(random_state=0, verbose=verbose).fit(bench[name], bench.X_holdout,
                                                                          bench.y_holdout)
    return fitted[name]


def neural_cleanse_rows(bench, *, verbose=0):
    """The labels each model's decision flags, with the decision score of the most anomalous label.

    "attack success" is that of the reversed trigger of the smallest-norm label on the
    clean test set (the defender's reconstruction of the backdoor).
    """
    rows = []
    for name in ("backdoored_model", "clean_model"):
        model = bench[name]
        nc = fitted_neural_cleanse(bench, name, verbose=verbose)
        label = int(nc.labels_[nc.l1_norms_.argmin()])
        pred = model.predict(nc.reversed_triggers_[label].apply(bench.X_test))
        flagged = ", ".join(map(str, nc.flagged_labels_)) or "none"
        top = int(nc.decision_scores_.argmax())
        rows.append({
            "step": f"Neural Cleanse, {name.replace('_', ' ')}",
            "clean accuracy": None,
            "attack success": attack_success_rate(bench.y_test, pred, label),
            "detail": (f"flagged: {flagged} ({nc.decision_rule} score {nc.decision_scores_[top]:.1f} for label "
                       f"{int(nc.labels_[top])}, threshold {nc.decision_threshold_:g}; true target "
                       f"{bench.target_label})"),
        })
    return rows

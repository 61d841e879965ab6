"""Demo step: repair the backdoored model (fine-pruning, neuron pruning, unlearning)."""

from ..metrics import attack_success_rate, clean_accuracy
from ._neural_cleanse import fitted_neural_cleanse


def repair_rows(bench, *, verbose=0):
    from ..repair import FinePruner, NeuronPruner, Unlearner

    model, X, y = bench.backdoored_model, bench.X_holdout, bench.y_holdout
    data = f"{len(X)} clean hold-out images"
    # what a user has: the Neural Cleanse inspection of the same model (flagged labels, reversed triggers)
    nc = fitted_neural_cleanse(bench, verbose=verbose)
    found = f"NeuralCleanse's trigger for {', '.join(map(str, nc.flagged_labels_)) or 'no label'}"
    repairs = [
        ("FinePruner", FinePruner(random_state=0, verbose=verbose),
         lambda p: f"{100 * p.prune_ratio_:.0f}% of {p.layer_} pruned, fine-tuned on {data}"),
        ("NeuronPruner", NeuronPruner(nc, verbose=verbose),
         lambda p: f"{len(p.pruned_units_)} {p.layer_} units pruned ({found})"),
        ("Unlearner", Unlearner(nc, random_state=0, verbose=verbose),
         lambda p: f"{found} stamped on 20% of {data}, labels kept"),
    ]
    rows = []
    for name, repair, detail in repairs:
        repaired = repair.fit(model, X, y).repaired_model_
        rows.append({
            "step": name,
            "clean accuracy": clean_accuracy(bench.y_test, repaired.predict(bench.X_test)),
            "attack success": attack_success_rate(
                bench.y_test, repaired.predict(bench.X_test_triggered), bench.target_label),
            "detail": detail(repair),
        })
    return rows

"""Demo step: the clean and the backdoored model, before any defense."""

from ..metrics import attack_success_rate, clean_accuracy


def attack_rows(bench, *, verbose=0):
    rows = []
    for name in ("clean_model", "backdoored_model"):
        model = bench[name]
        rows.append({
            "step": name.replace("_", " "),
            "clean accuracy": clean_accuracy(bench.y_test, model.predict(bench.X_test)),
            "attack success": attack_success_rate(
                bench.y_test, model.predict(bench.X_test_triggered), bench.target_label),
            "detail": f"{bench.attack} trigger, l1 norm {bench.trigger.l1_norm:g}",
        })
    return rows

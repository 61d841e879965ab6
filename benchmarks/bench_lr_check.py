"""FinePruner's learning-rate check on zoo entries: the rate kept, and what the repaired model scores.

One line per entry of the split: the clean test accuracy before (``acc0``) and after
(``acc``) ``FinePruner(random_state=0)`` with its defaults (the check on), the attack
success of each true trigger on the repaired model (``asr``), the fraction pruned, the
accuracy on the defender's data before pruning, after pruning and after fine-tuning
(``Xacc``: the last is the data it fine-tuned on, hence near 1), the learning rate kept
and the check's held-out accuracy of each rate tried against the model before the repair.
The ground truth only scores; nothing in the repair reads it.

    python benchmarks/bench_lr_check.py development signs all

Arguments: split (``development`` or ``held-out``), data set, architecture (``all`` for every one).
"""

import sys
import time
import warnings

import torch

from backdoorlearn import FinePruner, RepairWarning
from backdoorlearn.datasets import load_zoo_model, zoo_specs
from backdoorlearn.metrics import clean_accuracy


def main():
    torch.set_num_threads(1)
    split, data, arch = sys.argv[1], sys.argv[2], sys.argv[3]
    for spec in zoo_specs(split, data=data, arch=None if arch == "all" else arch):
        zm = load_zoo_model(spec)
        X, y = zm.X_defender, zm.y_defender
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RepairWarning)
            fp = FinePruner(random_state=0).fit(zm.model, X, y)
        acc0 = clean_accuracy(zm.y_test, zm.model.predict(zm.X_test))
        acc = clean_accuracy(zm.y_test, fp.repaired_model_.predict(zm.X_test))
        asr = zm.attack_success_of(fp.repaired_model_) if zm.truth.triggers else None
        search = fp.lr_search_
        checked = None if search is None else (search.validation_accuracy.round(3).tolist(),
                                                round(search.reference_accuracy, 3))
        print(f"{zm.name:40s} n={len(X)} acc0={acc0:.3f} acc={acc:.3f} asr={asr} pruned={fp.prune_ratio_:.2f} "
              f"Xacc {fp.accuracy_before_:.3f}->{fp.accuracy_pruned_:.3f}->{fp.accuracy_repaired_:.3f} "
              f"{time.perf_counter() - t:.0f}s lr={fp.lr_:g} search={checked} ok={fp.repair_ok_}", flush=True)


if __name__ == "__main__":
    main()

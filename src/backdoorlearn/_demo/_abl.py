"""Demo step: AntiBackdoorLearner, a clean network trained on the poisoned set."""

import numpy as np

from ..metrics import attack_success_rate, clean_accuracy
from ..models import SmallCNN
from ..training import AntiBackdoorLearner

# The signs need a shorter, larger-step budget (the benchmark trains 16 epochs).
_FIT = {"digits": {}, "signs": dict(lr=3e-3, train_batch_size=64, isolation_epochs=10, fine_tune_epochs=12)}


def abl_rows(bench, *, verbose=0):
    abl = AntiBackdoorLearner(SmallCNN, module_params=bench.module_params,
                              random_state=0, verbose=verbose, **_FIT[bench.dataset])
    abl.fit(bench.X_train, bench.y_train)
    precision = float(np.mean(bench.poison_mask[abl.isolated_indices_]))
    return [{
        "step": "ABL (train on poisoned set)",
        "clean accuracy": clean_accuracy(bench.y_test, abl.predict(bench.X_test)),
        "attack success": attack_success_rate(bench.y_test, abl.predict(bench.X_test_triggered),
                                              bench.target_label),
        "detail": (f"isolated {len(abl.isolated_indices_)} rows, "
                   f"{100 * precision:.0f}% of them poisoned"),
    }]

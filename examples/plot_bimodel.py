"""
=====================================================================
Serve a backdoored model safely: two models cross-examine (BBD)
=====================================================================

A backdoored network learned the clean task from the whole training set;
a fine-pruned copy lost the backdoor but, repaired on a few hundred clean
images, also some accuracy. The Bimodel Backdoor Defence serves both:
where they agree the answer stands, where they disagree the input is
rejected with an extra label (``N``, the seeds' "N+1" label).
:class:`~backdoorlearn.BimodelClassifier` only needs ``predict_proba`` from
each model.
"""

# %%
# The backdoored model, and a repair with fine-pruning
# ----------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np

from backdoorlearn import BimodelClassifier, NeuralCleanse, make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy
from backdoorlearn.repair import FinePruner

bench = make_backdoor_benchmark("digits", random_state=0)
backdoored = bench.backdoored_model
pruner = FinePruner(random_state=0)
repaired = pruner.fit(backdoored, bench.X_holdout, bench.y_holdout).repaired_model_

for name, model in (("backdoored", backdoored), ("fine-pruned", repaired)):
    print(f"{name:12s} clean accuracy "
          f"{clean_accuracy(bench.y_test, model.predict(bench.X_test)):.3f}, attack success "
          f"{attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), 0):.3f}")

# %%
# Targeted and untargeted BBD
# ---------------------------
# In targeted mode the repaired model is only asked about inputs the
# backdoored one sends to a suspected target: the labels a
# :class:`~backdoorlearn.NeuralCleanse` fitted on the same clean images flags
# (the defender does not know the true target), a tenth of the clean traffic
# here. Untargeted mode asks it always, and so rejects every clean input
# where the weaker repaired model errs.
nc = NeuralCleanse(random_state=0).fit(backdoored, bench.X_holdout, bench.y_holdout)
print("NeuralCleanse flagged", nc.flagged_labels_)
results = {}
for mode, targets in (("targeted", nc.flagged_labels_), ("untargeted", None)):
    bbd = BimodelClassifier(backdoored, repaired, target_labels=targets).fit(bench.X_holdout)
    clean = bbd.cross_examine(bench.X_test)  # predict, and say which inputs the repaired model saw
    pred_clean, asked = clean.y_pred, clean.asked.mean()
    pred_trig = bbd.predict(bench.X_test_triggered)
    results[mode] = dict(
        clean_rejected=np.mean(pred_clean == bbd.reject_label_),
        trig_rejected=np.mean(pred_trig == bbd.reject_label_),
        attack_success=attack_success_rate(bench.y_test, pred_trig, bench.target_label),
        asked=asked,
    )
    print(mode, {k: round(float(v), 3) for k, v in results[mode].items()})

# %%
# What each mode costs and buys
# -----------------------------
fig, ax = plt.subplots(figsize=(6, 3))
keys = ["clean_rejected", "trig_rejected", "attack_success", "asked"]
labels = ["clean\nrejected", "triggered\nrejected", "attack\nsuccess", "2nd model\nasked (clean)"]
x = np.arange(len(keys))
for i, mode in enumerate(results):
    ax.bar(x + 0.4 * i - 0.2, [results[mode][k] for k in keys], width=0.4, label=mode)
ax.set_xticks(x, labels)
ax.set_ylabel("fraction")
ax.legend()
fig.tight_layout()
plt.show()

"""
===========================================================
Inspecting a model for a backdoor with Neural Cleanse
===========================================================

Neural Cleanse (Wang et al., IEEE S&P 2019) asks, for every label, for the
smallest trigger that sends clean images of the other labels to that label.
A backdoored label needs a far smaller trigger than the others: its L1 norm
lies several times below the other labels' (flagged by the log-norm score of
``decision_rule="log-mad"``; the paper's MAD anomaly index is printed beside
it).

It needs the model's weights (white box) and a few clean images: here the
defender's hold-out digits of :func:`~backdoorlearn.make_backdoor_benchmark`,
for a clean model and a model backdoored with a 2x2 white square (target 0).
"""

# %%
# Reverse engineering a trigger per label
# ---------------------------------------
# All ten labels are optimized together (one batched forward pass per
# step); each label keeps its own cost schedule and leaves the batch when it
# stops early.
import matplotlib.pyplot as plt
import numpy as np

from backdoorlearn import ActivationFilter, NeuralCleanse, make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, false_acceptance_rate, false_rejection_rate
from backdoorlearn.plotting import TriggerDisplay

bench = make_backdoor_benchmark("digits", random_state=0)
results = {}
for name in ("clean_model", "backdoored_model"):
    nc = NeuralCleanse(random_state=0).fit(bench[name], bench.X_holdout, bench.y_holdout)
    results[name] = nc
    print(f"{name:17s} flagged labels {nc.flagged_labels_}, largest decision score "
          f"{np.nanmax(nc.decision_scores_):.2f} (threshold {nc.decision_threshold_:g}), "
          f"paper's anomaly index {nc.anomaly_index_:.2f}")

# %%
# The L1 norms: one label stands out
# ----------------------------------
fig, ax = plt.subplots(figsize=(6, 2.8))
for offset, (name, nc) in zip((-0.2, 0.2), results.items()):
    ax.bar(nc.labels_ + offset, nc.l1_norms_, width=0.4, label=name.replace("_", " "))
ax.set_xlabel("label")
ax.set_ylabel("L1 norm of the reversed mask")
ax.set_xticks(range(10))
ax.legend()
fig.tight_layout()

# %%
# The reversed triggers beside the original
# -----------------------------------------
# The trigger reversed for label 0 sits where the attacker's square is. It
# also works as a trigger on the clean test set.
nc = results["backdoored_model"]
TriggerDisplay.from_estimator(nc, original=bench.trigger)
pred = bench.backdoored_model.predict(nc.reversed_triggers_[0].apply(bench.X_test))
print(f"attack success of the reversed trigger: {attack_success_rate(bench.y_test, pred, 0):.1%}")

# %%
# Filtering triggered inputs (Sec. VI-A)
# --------------------------------------
# The reversed trigger tells which penultimate-layer neurons the backdoor
# uses; inputs that fire them are flagged (threshold at 5% false positives
# on the clean hold-out).
filt = ActivationFilter(bench.backdoored_model, nc).fit(bench.X_holdout)
X = np.concatenate([bench.X_test, bench.X_test_triggered])
y = np.r_[np.zeros(len(bench.X_test)), np.ones(len(bench.X_test_triggered))]
pred = filt.predict(X)
print(f"false positive rate {false_rejection_rate(y, pred):.1%}, "
      f"false negative rate {false_acceptance_rate(y, pred):.1%}")
plt.show()

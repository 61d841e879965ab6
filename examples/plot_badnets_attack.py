"""
======================================
A BadNets attack on handwritten digits
======================================

A backdoored classifier behaves normally on clean inputs but sends any input
that carries the attacker's trigger to the target label. Here we poison 10%
of scikit-learn's digits with a 2x2 white square in the bottom-right corner,
train a small CNN on them, and compare it with the same network trained on
clean data.
"""

# %%
# Build the benchmark
# -------------------
# :func:`~backdoorlearn.datasets.make_backdoor_benchmark` poisons the training
# set, keeps a clean hold-out for the defender, and trains two
# :class:`~backdoorlearn.SmallCNN` nets through skorch (a few seconds on a CPU).
import matplotlib.pyplot as plt
import numpy as np

from backdoorlearn import make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

bench = make_backdoor_benchmark("digits", attack="badnets", target_label=0, random_state=0)
print(f"{len(bench.X_train)} training images, {bench.poison_mask.sum()} poisoned; "
      f"trigger: {bench.trigger}")

# %%
# Clean and triggered images
# --------------------------
# The trigger is a :class:`~backdoorlearn.Trigger`: a mask and a pattern,
# stamped as ``(1 - mask) * x + mask * pattern``.
fig, axes = plt.subplots(2, 6, figsize=(8, 3))
for j in range(6):
    axes[0, j].imshow(bench.X_test[j, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, j].set_title(f"label {bench.y_test[j]}", fontsize=9)
    pred = bench.backdoored_model.predict(bench.X_test_triggered[j : j + 1])[0]
    axes[1, j].imshow(bench.X_test_triggered[j, 0], cmap="gray", vmin=0, vmax=1)
    axes[1, j].set_title(f"predicted {pred}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
axes[0, 0].text(-6, 4, "clean", rotation=90, va="center")
axes[1, 0].text(-6, 4, "triggered", rotation=90, va="center")
fig.suptitle("Top: clean test digits. Bottom: with the trigger, as the backdoored model sees them")
plt.tight_layout()

# %%
# Clean accuracy and attack success
# ---------------------------------
# Both models are accurate on clean digits; only the backdoored one obeys the
# trigger. Attack success counts triggered inputs of non-target classes that
# land on the target.
for name in ("clean_model", "backdoored_model"):
    model = bench[name]
    acc = clean_accuracy(bench.y_test, model.predict(bench.X_test))
    asr = attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), bench.target_label)
    print(f"{name:17s} clean accuracy {acc:6.1%}   attack success {asr:6.1%}")

# %%
# The colour traffic signs
# ------------------------
# The second embedded data set is drawn procedurally: 3x32x32 signs whose
# class is a shape, a colour scheme and a symbol. Its trigger is a 4x4
# yellow-and-magenta checkerboard.
from backdoorlearn.datasets import default_trigger, make_traffic_signs

X, y = make_traffic_signs(n_samples=8, n_classes=10, random_state=1)
trigger = default_trigger("signs", X.shape[1:])
fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
for j in range(8):
    axes[0, j].imshow(np.transpose(X[j], (1, 2, 0)))
    axes[0, j].set_title(f"class {y[j]}", fontsize=9)
    axes[1, j].imshow(np.transpose(trigger.apply(X[j : j + 1])[0], (1, 2, 0)))
for ax in axes.ravel():
    ax.set_axis_off()
plt.tight_layout()
plt.show()

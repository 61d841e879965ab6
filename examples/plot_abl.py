"""
=============================================================
Train a clean model on poisoned data (Anti-Backdoor Learning)
=============================================================

A scraped training set may hold poisoned images: a trigger stamped on and
the label changed to the attacker's target. Anti-Backdoor Learning trains
on it anyway: backdoor examples are learned much faster than clean ones,
so a first stage that holds every example's loss near ``gamma`` leaves the
backdoor examples far below it; the lowest-loss 1% is isolated. The
second stage trains on the rest, unlearns the isolated rows together with
the kept rows that sit with them in the network's features (most of the
other poisoned rows), and recovers on what is left.
"""

# %%
# A poisoned training set
# -----------------------
import matplotlib.pyplot as plt
import numpy as np

from backdoorlearn import AntiBackdoorLearner, SmallCNN, make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

bench = make_backdoor_benchmark("digits", random_state=0)
print(f"{len(bench.X_train)} training images, {bench.poison_mask.sum()} poisoned")

# %%
# Training with ABL
# -----------------
# The same network as the benchmark's models, trained on the poisoned set.
abl = AntiBackdoorLearner(SmallCNN, module_params=bench.module_params, random_state=0)
abl.fit(bench.X_train, bench.y_train)
precision = bench.poison_mask[abl.isolated_indices_].mean()
print(f"isolated {len(abl.isolated_indices_)} rows, {100 * precision:.0f}% of them poisoned")
unlearned = abl.unlearned_indices_
print(f"unlearned {len(unlearned)} rows ({bench.poison_mask[unlearned].sum()} poisoned); "
      f"{bench.poison_mask[abl.anchor_mask_].sum()} poisoned rows left in the clean anchor")

for name, model in (("plain training", bench.backdoored_model), ("ABL", abl),
                    ("trained on clean data", bench.clean_model)):
    ca = clean_accuracy(bench.y_test, model.predict(bench.X_test))
    asr = attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), bench.target_label)
    print(f"{name:22s} clean accuracy {ca:.3f}  attack success {asr:.3f}")

# %%
# Why isolation works: the losses after the first stage
# -----------------------------------------------------
# Local gradient ascent keeps the clean examples' loss near ``gamma``; the
# poisoned ones, tied to one simple feature, fall far below it.
losses = np.log10(abl.isolation_losses_ + 1e-8)
fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(losses.min(), losses.max(), 50)
ax.hist(losses[~bench.poison_mask], bins=bins, alpha=0.6, label="clean")
ax.hist(losses[bench.poison_mask], bins=bins, alpha=0.6, label="poisoned")
ax.axvline(np.log10(abl.isolation_losses_[abl.isolated_indices_].max()), color="k", ls="--",
           label="isolated below")
ax.set_xlabel("log10 cross-entropy after isolation stage")
ax.legend()
fig.tight_layout()
plt.show()

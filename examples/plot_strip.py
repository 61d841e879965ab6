"""
=================================================
Detecting trojaned inputs at run time with STRIP
=================================================

STRIP (Gao et al., ACSAC 2019) superimposes each incoming input with clean
images and watches the model's predictions: a clean input blended with
another digit becomes ambiguous (high entropy), while an input carrying the
trigger keeps being sent to the target label (low entropy). It needs only
``predict_proba``: it is a black-box defense.

Here STRIP guards the backdoored digits classifier of
:func:`~backdoorlearn.make_backdoor_benchmark`: it learns its threshold from
the defender's clean hold-out digits at a 1% false rejection rate.
"""

# %%
# The benchmark and the detector
# ------------------------------
# The pool of clean overlays and the benign entropies that set the threshold
# both come from the hold-out set. Each benign entropy is computed with
# overlays drawn from the *other* hold-out images.
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from backdoorlearn import GuardedClassifier, STRIPDetector, make_backdoor_benchmark
from backdoorlearn.metrics import (
    FAR_SCORER,
    FRR_SCORER,
    attack_success_rate,
    false_acceptance_rate,
    false_rejection_rate,
)
from backdoorlearn.plotting import EntropyHistogramDisplay

bench = make_backdoor_benchmark("digits", random_state=0)
strip = STRIPDetector(bench.backdoored_model, n_perturbations=100, false_rejection_rate=0.01,
                      random_state=0).fit(bench.X_holdout)
print(f"threshold (normalized entropy): {strip.threshold_:.4f} "
      f"= {strip.threshold_ * np.log2(strip.n_classes_):.4f} bits")

# %%
# What a blend looks like
# -----------------------
# The default superimposition is the paper's: the two images are added
# (``cv2.addWeighted(x, 1, overlay, 1, 0)``) and clipped to the pool's value
# range, [0, 1] here. The trigger survives every blend.
rng = np.random.default_rng(0)
overlays = bench.X_holdout[rng.choice(len(bench.X_holdout), 5, replace=False)]
fig, axes = plt.subplots(2, 5, figsize=(7, 3))
for j, overlay in enumerate(overlays):
    for row, x in enumerate((bench.X_test[0], bench.X_test_triggered[0])):
        blend = np.clip(x + overlay, 0, 1)
        pred = bench.backdoored_model.predict(blend[None])[0]
        axes[row, j].imshow(blend[0], cmap="gray", vmin=0, vmax=1)
        axes[row, j].set_title(f"predicted {pred}", fontsize=8)
        axes[row, j].set_axis_off()
fig.suptitle("Blends of a clean (top) and a triggered (bottom) digit")
plt.tight_layout()

# %%
# Entropy histograms
# ------------------
# Benign test digits spread over high entropies; triggered ones pile up near
# zero, left of the threshold.
X_eval = np.concatenate([bench.X_test, bench.X_test_triggered])
y_eval = np.r_[np.zeros(len(bench.X_test)), np.ones(len(bench.X_test_triggered))].astype(int)
disp = EntropyHistogramDisplay.from_estimator(strip, X_eval, y_eval)
disp.ax_.set_title("STRIP on the backdoored digits model (N=100)")

flags = (disp.scores < strip.threshold_).astype(int)  # what strip.predict(X_eval) returns
print(f"FRR on clean test digits:     {false_rejection_rate(y_eval[y_eval == 0], flags[y_eval == 0]):.1%}")
print(f"FAR on triggered test digits: {false_acceptance_rate(y_eval[y_eval == 1], flags[y_eval == 1]):.1%}")

# %%
# Serving the model behind STRIP
# ------------------------------
# :class:`~backdoorlearn.GuardedClassifier` answers the model's label, or the
# extra label ``N + 1`` (here 10) for inputs STRIP flags.
guard = GuardedClassifier(bench.backdoored_model, STRIPDetector(None, random_state=0))
guard.fit(bench.X_holdout)
asr_before = attack_success_rate(bench.y_test, bench.backdoored_model.predict(bench.X_test_triggered), 0)
asr_after = attack_success_rate(bench.y_test, guard.predict(bench.X_test_triggered), 0)
print(f"attack success: {asr_before:.1%} without the guard, {asr_after:.1%} with it; "
      f"clean accuracy with the guard {guard.score(bench.X_test, bench.y_test):.1%}")

# %%
# Tuning the false rejection rate with GridSearchCV
# -------------------------------------------------
# With labels (0 = clean, 1 = trojaned) ``fit`` uses only the clean rows, so
# a labelled mix works in ``GridSearchCV``. Here the mix is the hold-out set
# and a triggered copy of it (the defender's guess of a trigger); the scorers
# are the negated FRR and FAR, and the refit picks the best F1 (N=20 blends
# per input here, to keep the example fast).
X_mix = np.concatenate([bench.X_holdout, bench.trigger.apply(bench.X_holdout)])
y_mix = np.r_[np.zeros(len(bench.X_holdout)), np.ones(len(bench.X_holdout))].astype(int)
search = GridSearchCV(
    STRIPDetector(bench.backdoored_model, n_perturbations=20, random_state=0),
    {"false_rejection_rate": [0.01, 0.05, 0.1]},
    scoring={"f1": "f1", "frr": FRR_SCORER, "far": FAR_SCORER}, refit="f1",
    cv=StratifiedKFold(3, shuffle=True, random_state=0),
).fit(X_mix, y_mix)
for rate, frr, far in zip(search.cv_results_["param_false_rejection_rate"],
                          search.cv_results_["mean_test_frr"], search.cv_results_["mean_test_far"]):
    print(f"requested FRR {rate:5.0%}: measured FRR {abs(frr):5.1%}, FAR {abs(far):5.1%}")
print("best:", search.best_params_)
plt.show()

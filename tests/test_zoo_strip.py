"""STRIP on held-out zoo entries, which no default was tuned on.

The same subset as ``test_zoo_neural_cleanse.py`` (every held-out digits entry and
the held-out MLPs on MNIST-5k and the signs); ``benchmarks/bench_zoo.py`` runs the
whole held-out set. STRIP gets the model and the defender's clean images; the
triggers only score it.
"""

import numpy as np
import pytest
from conftest import shared_result

from backdoorlearn import STRIPDetector
from backdoorlearn.datasets import load_zoo_model, zoo_specs
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate

pytestmark = pytest.mark.slow

SUBSET = zoo_specs("held-out", data="digits") + zoo_specs("held-out", data=["mnist5k", "signs"], arch="mlp")
INFECTED = [s for s in SUBSET if s.attack in ("all-to-one", "two-target")]


def _rates(spec):
    """(FRR on the clean test images, FAR of each trigger) at the threshold for 1% FRR, once per session."""
    def fit():
        zm = load_zoo_model(spec)
        strip = STRIPDetector(zm.model, random_state=0).fit(zm.X_defender)
        frr = false_rejection_rate(np.zeros(len(zm.X_test)), strip.predict(zm.X_test))
        fars = []
        for k in range(len(zm.truth.triggers)):
            X_t, _ = zm.triggered_test(k)
            fars.append(false_acceptance_rate(np.ones(len(X_t)), strip.predict(X_t)))
        return frr, fars

    return shared_result(("zoo strip", spec.name), fit)


@pytest.mark.parametrize("spec", INFECTED, ids=lambda s: s.name)
def test_false_rejections_near_the_requested_rate(spec):
    # the threshold is the defender's 1% quantile; on unseen clean images the rate stays near it
    frr, _ = _rates(spec)
    assert frr <= 0.05, frr


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: FAR <= 2% at FRR 1% on >= 90% of patch, blend and watermark models; benchmarks/results/"
    "bench_zoo.txt, 'STRIP: FAR <= 2%' row"))
def test_far_at_most_2_percent_on_90_percent_of_infected_models():
    ok = [max(_rates(s)[1]) <= 0.02 for s in INFECTED]
    assert np.mean(ok) >= 0.9, ok


def test_strip_catches_most_triggers_on_most_infected_models():
    # a floor under what the default reaches on this subset, so that a regression fails while the target
    # above stays an expected failure
    ok = [max(_rates(s)[1]) <= 0.25 for s in INFECTED]
    assert np.mean(ok) >= 0.6, ok

"""Neural Cleanse on held-out zoo entries, which no default was tuned on.

The subset: every held-out digits entry (the four architectures, every attack) and
the held-out MLPs on MNIST-5k and the signs, cheap enough for the suite.
``benchmarks/bench_zoo.py`` runs the whole held-out set; its table is in the
zoo page of the user guide. NeuralCleanse gets what a user has (the model and the
defender's clean images and labels); the ground truth only scores its answer.
"""

import numpy as np
import pytest
from conftest import shared_result

from backdoorlearn import NeuralCleanse
from backdoorlearn.datasets import load_zoo_model, zoo_specs

pytestmark = pytest.mark.slow

SUBSET = zoo_specs("held-out", data="digits") + zoo_specs("held-out", data=["mnist5k", "signs"], arch="mlp")


def _neural_cleanse(spec, **params):
    """NeuralCleanse with its defaults on the entry, fitted once per test session."""
    def fit():
        zm = load_zoo_model(spec)
        return NeuralCleanse(random_state=0, **params).fit(zm.model, zm.X_defender, zm.y_defender)

    return shared_result(("zoo neural cleanse", spec.name, tuple(sorted(params.items()))), fit)


def _paper_flags(nc):
    """The labels the paper's rule flags: MAD anomaly index above 2, below the median."""
    below = nc.l1_norms_ < nc.median_l1_norm_
    return set(nc.labels_[below & (nc.anomaly_indices_ > 2)].tolist())


def _label_mode(attacks):
    return [s for s in SUBSET if s.attack in attacks]


@pytest.mark.parametrize("spec", _label_mode({"all-to-one", "two-target", "clean"}), ids=lambda s: s.name)
def test_entry(spec):
    # Runs (and caches) each entry; the targets are asserted over the subset below.
    nc = _neural_cleanse(spec)
    assert np.isfinite(nc.decision_scores_).all()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: >= 90% of the true targets flagged; benchmarks/results/bench_zoo.txt, 'true target flagged' rows "
    "(the subset's misses are label 1 of the VGG digits entries, whose reversed norm is no smaller than "
    "clean labels' on that model)"))
def test_true_targets_flagged_in_at_least_90_percent():
    hits = [t in _neural_cleanse(s).flagged_labels_
            for s in _label_mode({"all-to-one", "two-target"}) for t in s.target_labels]
    assert np.mean(hits) >= 0.9, hits


def test_most_digits_targets_flagged():
    # a floor under what the decision reaches on the digits subset, so that a regression fails while the
    # 90% target above stays an expected failure
    hits = [t in _neural_cleanse(s).flagged_labels_
            for s in _label_mode({"all-to-one", "two-target"}) if s.data == "digits" for t in s.target_labels]
    assert np.mean(hits) >= 0.8, hits


def test_clean_models_flagged_in_at_most_10_percent():
    flagged = [_neural_cleanse(s).backdoor_detected_ for s in _label_mode({"clean"})]
    assert np.mean(flagged) <= 0.1, flagged


def test_few_clean_labels_flagged_in_infected_models():
    # not a target of the issue; a bound on what the repairs downstream would act on
    infected = _label_mode({"all-to-one", "two-target"})
    extra = sum(len(set(_neural_cleanse(s).flagged_labels_) - set(s.target_labels)) for s in infected)
    assert extra <= 0.05 * sum(10 - len(s.target_labels) for s in infected), extra


def test_decision_does_at_least_as_well_as_the_papers_rule():
    def score(flags):
        hits = [t in flags(_neural_cleanse(s)) for s in _label_mode({"all-to-one", "two-target"})
                for t in s.target_labels]
        false = [bool(flags(_neural_cleanse(s))) for s in _label_mode({"clean"})]
        return np.mean(hits) - np.mean(false)

    assert score(lambda nc: set(nc.flagged_labels_)) >= score(_paper_flags)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: the true pair flagged in >= 80% of source-specific entries; benchmarks/results/bench_zoo.txt, "
    "'source-specific: true pair flagged' row"))
def test_source_specific_pair_flagged_in_at_least_80_percent():
    specs = _label_mode({"source-specific"})
    hits = []
    for s in specs:
        nc = _neural_cleanse(s, pairs="all")
        hits.append(any((src, s.target_labels[0]) in nc.flagged_pairs_ for src in s.source_labels))
    assert np.mean(hits) >= 0.8, hits

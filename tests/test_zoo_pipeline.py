"""The pipeline a user runs, with no oracle, on the held-out digits zoo entries (issue 13).

Each entry's own ``NeuralCleanse`` (the fit ``test_zoo_neural_cleanse.py`` shares)
feeds Unlearner, NeuronPruner, ActivationFilter and targeted BimodelClassifier;
FinePruner needs no trigger. The true triggers and targets only score the results,
on test images no defense saw; each target of a two-target entry is a case of its
own. ``benchmarks/bench_pipeline.py`` prints the same figures as a table
(``benchmarks/results/bench_pipeline.txt``). Targets the defenses miss are strict
xfails; a floor under each keeps a regression from hiding behind them.
"""

import warnings

import numpy as np
import pytest
from conftest import shared_result
from test_zoo_neural_cleanse import _neural_cleanse

from backdoorlearn import ActivationFilter, BimodelClassifier, FinePruner, NeuronPruner, Unlearner
from backdoorlearn.datasets import load_zoo_model, zoo_specs
from backdoorlearn.metrics import clean_accuracy

pytestmark = pytest.mark.slow

INFECTED = [s for s in zoo_specs("held-out", data="digits") if s.attack != "clean"]


def _scores(zm, model):
    return clean_accuracy(zm.y_test, model.predict(zm.X_test)), np.atleast_1d(zm.attack_success_of(model))


def _pipeline(spec):
    """Every defense of the chain on ``spec``, fed by its NeuralCleanse; fitted once per session."""
    def build():
        zm = load_zoo_model(spec)
        nc = _neural_cleanse(spec)
        X, y, model = zm.X_defender, zm.y_defender, zm.model
        out = {"accuracy": zm.clean_accuracy, "flagged": list(nc.flagged_labels_)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the no-trigger and budget warnings are tested elsewhere
            fine_pruned = FinePruner(random_state=0).fit(model, X, y).repaired_model_
            out["FinePruner"] = _scores(zm, fine_pruned)
            out["Unlearner"] = _scores(zm, Unlearner(nc, random_state=0).fit(model, X, y).repaired_model_)
            out["NeuronPruner"] = _scores(zm, NeuronPruner(nc).fit(model, X, y).repaired_model_)
            filt = ActivationFilter(model, nc).fit(X)
            out["fnr"] = [float(np.mean(filt.predict(zm.triggered_test(k)[0]) == 0))
                          for k in range(len(spec.target_labels))]
            bbd = BimodelClassifier(model, fine_pruned, target_labels=list(nc.flagged_labels_)).fit(X, y)
            out["rejected"] = float(np.mean(bbd.predict(zm.X_test) == bbd.reject_label_))
            out["given"] = [float(np.mean(bbd.predict(zm.triggered_test(k)[0]) == t))
                            for k, t in enumerate(spec.target_labels)]
        return out

    return shared_result(("zoo pipeline", spec.name), build)


def _repaired(name, asr, lost):
    def ok(r, k):
        acc, attack = r[name]
        return attack[k] <= asr and r["accuracy"] - acc <= lost
    return ok


def _share(ok):
    hits = [bool(ok(_pipeline(s), k)) for s in INFECTED for k in range(len(s.target_labels))]
    return np.mean(hits), hits


UNLEARNER = _repaired("Unlearner", 0.05, 0.03)
NEURON_PRUNER = _repaired("NeuronPruner", 0.10, 0.05)


def FILTER(r, k):
    return r["fnr"][k] <= 0.05


def BBD(r, k):
    return r["rejected"] <= 0.02 and r["given"][k] <= 0.01


@pytest.mark.parametrize("spec", INFECTED, ids=lambda s: s.name)
def test_entry(spec):
    # Runs (and caches) the chain on each entry; the targets are asserted over the entries below.
    r = _pipeline(spec)
    assert 0 <= r["FinePruner"][0] <= 1 and len(r["fnr"]) == len(spec.target_labels)


def test_fine_pruner_repairs_at_least_90_percent():
    share, hits = _share(_repaired("FinePruner", 0.05, 0.03))
    assert share >= 0.9, hits


def test_unlearner_fed_by_neural_cleanse_repairs_at_least_90_percent():
    # Unlearner(nc) with its default no_trigger="fine-prune": FinePruner where Neural Cleanse flagged nothing
    share, hits = _share(UNLEARNER)
    assert share >= 0.9, hits


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: >= 80% of cases within 10% ASR and 5 points; benchmarks/results/bench_pipeline.txt, 'NeuronPruner "
    "fed by NC' row (pruning alone does not disable the reversed trigger within the budget on these nets)"))
def test_neuron_pruner_fed_by_neural_cleanse_repairs_at_least_80_percent():
    share, hits = _share(NEURON_PRUNER)
    assert share >= 0.8, hits


def test_neuron_pruner_stays_near_its_budget():
    # its clean-accuracy budget is 5 points on the defender's images; on the test images it may overshoot a little
    lost = [_pipeline(s)["accuracy"] - _pipeline(s)["NeuronPruner"][0] for s in INFECTED]
    assert max(lost) <= 0.08, lost


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: FNR <= 5% on >= 80% of cases; benchmarks/results/bench_pipeline.txt, 'ActivationFilter fed by NC' "
    "row (blend and watermark triggers, and targets Neural Cleanse missed)"))
def test_activation_filter_fed_by_neural_cleanse_catches_at_least_80_percent():
    share, hits = _share(FILTER)
    assert share >= 0.8, hits


def test_activation_filter_floor():
    share, hits = _share(FILTER)
    assert share >= 0.4, hits


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: clean rejected <= 2% and given target <= 1% on >= 90% of cases; benchmarks/results/"
    "bench_pipeline.txt, 'targeted BBD' row (targets Neural Cleanse missed, and the fine-pruned second model "
    "still answering the target on a few percent)"))
def test_targeted_bbd_fed_by_neural_cleanse_at_least_90_percent():
    share, hits = _share(BBD)
    assert share >= 0.9, hits


def test_targeted_bbd_floor():
    share, hits = _share(BBD)
    assert share >= 0.4, hits

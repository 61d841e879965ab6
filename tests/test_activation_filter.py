"""ActivationFilter (Neural Cleanse Sec. VI-A): quality on the digits benchmark, interface, errors."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.neural_network import MLPClassifier

from contracts import raises_naming, watch

from backdoorlearn import ActivationFilter, NeuralCleanse, SmallCNN, Trigger
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate


@pytest.fixture(scope="module")
def nc(digits_bench):
    # the trigger is reversed from the hold-out alone (123 images)
    return NeuralCleanse(random_state=0).fit(digits_bench.backdoored_model, digits_bench.X_holdout,
                                             digits_bench.y_holdout)


@pytest.fixture(scope="module")
def fitted_run(nc, digits_bench):
    with watch(digits_bench.backdoored_model, digits_bench.X_holdout) as w:
        filt = ActivationFilter(digits_bench.backdoored_model, nc).fit(digits_bench.X_holdout)
    return filt, w


@pytest.fixture(scope="module")
def fitted(fitted_run):
    return fitted_run[0]


def test_fit_leaves_model_and_data_unchanged(fitted_run):
    fitted_run[1].assert_unchanged()


def test_fnr_at_5_percent_fpr(fitted, digits_bench):
    # The paper's measure (Fig. 8): clean test images and the same images with the
    # original trigger, 1:1; the threshold giving 5% FPR on the clean ones.
    clean = fitted.score_samples(digits_bench.X_test)
    triggered = fitted.score_samples(digits_bench.X_test_triggered)
    threshold = np.quantile(clean, 0.05)
    assert (triggered >= threshold).mean() <= 0.02  # FNR
    # and with the threshold the filter learned on the defender's 123 clean images
    y = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
    pred = fitted.predict(np.concatenate([digits_bench.X_test, digits_bench.X_test_triggered]))
    assert false_acceptance_rate(y, pred) <= 0.02
    assert false_rejection_rate(y, pred) <= 0.10


def test_detector_interface(fitted, digits_bench):
    X = digits_bench.X_test[:20]
    scores = fitted.score_samples(X)
    np.testing.assert_allclose(fitted.decision_function(X), scores - fitted.threshold_)
    np.testing.assert_array_equal(fitted.predict(X), (scores < fitted.threshold_).astype(int))
    assert fitted.layer_ == "penultimate"
    assert fitted.n_neurons_ == 8  # 1% of 64 units is < 1: min_neurons applies
    assert len(fitted.neurons_) == 1 and fitted.neurons_[0].shape == (8,)
    assert fitted.benign_scores_.shape == (len(digits_bench.X_holdout),)
    # the threshold is the benign scores' quantile at the requested rate
    assert fitted.threshold_ == pytest.approx(np.quantile(fitted.benign_scores_, fitted.false_rejection_rate))


def test_accepts_trigger_and_list(digits_bench, nc):
    b = digits_bench
    single = ActivationFilter(b.backdoored_model, nc.reversed_triggers_[0]).fit(b.X_holdout)
    np.testing.assert_allclose(single.score_samples(b.X_test[:10]),
                               ActivationFilter(b.backdoored_model, nc).fit(b.X_holdout).score_samples(
                                   b.X_test[:10]))
    both = ActivationFilter(b.backdoored_model, [nc.reversed_triggers_[0], b.trigger], top_fraction=0.2).fit(b.X_holdout)
    assert len(both.neurons_) == 2 and both.n_neurons_ == 12


def test_clone_keeps_fitted_neural_cleanse(digits_bench, nc):
    filt = ActivationFilter(digits_bench.backdoored_model, nc)
    copy = clone(filt)
    assert copy.triggers is nc and copy.model is digits_bench.backdoored_model


def test_errors(digits_bench):
    b = digits_bench
    X = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    trig = Trigger.patch((1, 8, 8), size=2)
    with raises_naming("triggers", match="fitted NeuralCleanse"):
        ActivationFilter(SmallCNN(1, 3), NeuralCleanse()).fit(X)
    clean_nc = NeuralCleanse(steps=2, random_state=0, anomaly_threshold=1e9).fit(
        SmallCNN(1, 3), X, np.arange(20) % 3)
    with raises_naming("triggers", match="flagged no label"):
        ActivationFilter(SmallCNN(1, 3), clean_nc, no_trigger="raise").fit(X)
    mlp = MLPClassifier(max_iter=5).fit(X.reshape(20, -1), np.arange(20) % 3)
    with pytest.raises(TypeError, match="white-box"):
        ActivationFilter(mlp, trig).fit(X)
    with raises_naming("layer", match="not a layer"):
        ActivationFilter(SmallCNN(1, 3), trig, layer="nope").fit(X)
    with raises_naming("false_rejection_rate"):
        ActivationFilter(SmallCNN(1, 3), trig, false_rejection_rate=1.5).fit(X)
    filt = ActivationFilter(SmallCNN(1, 3), trig).fit(X)
    with pytest.raises(ValueError, match="shape"):
        filt.predict(np.zeros((2, 1, 9, 9), np.float32))


def test_penultimate_is_what_the_classifier_reads():
    from torch import nn

    from backdoorlearn.models import MLP, ResidualCNN

    class SequentialHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          nn.Linear(4, 16), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(16, 3))

        def forward(self, x):
            return self.head(self.features(x))

    X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    trig = Trigger.patch((1, 8, 8), size=2)
    # never "head", the container of the logits layer
    for model, layer, n_units in ((SequentialHead(), "features.5", 16), (ResidualCNN(1, 3, widths=(4, 8)), "avgpool", 8),
                                  (MLP((1, 8, 8), 3, hidden=(16, 12)), "relu2", 12)):
        filt = ActivationFilter(model, trig, min_neurons=2).fit(X)
        assert filt.layer_ == layer
        assert filt.neurons_[0].max() < n_units


def test_bad_layer_lists_the_layers():
    X = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    with raises_naming("layer", match="available layers: conv1, relu1"):
        ActivationFilter(SmallCNN(1, 3), Trigger.patch((1, 8, 8), size=2), layer="nope").fit(X)


def test_two_triggers_on_different_scales_are_both_caught():
    # Units 0-7 copy pixel 0 times 100, units 8-15 copy pixel 15 times 1: trigger A (pixel 0 set to 1)
    # fires the large units, trigger B (pixel 15) the small ones. Scored on raw activations (the
    # paper's "gap"), the large units set the threshold and B's inputs pass; standardized, both are caught.
    import torch
    from torch import nn

    penultimate = nn.Linear(16, 16, bias=False)
    head = nn.Linear(16, 2)
    with torch.no_grad():
        penultimate.weight.zero_()
        penultimate.weight[:8, 0] = 100.0
        penultimate.weight[8:, 15] = 1.0
    model = nn.Sequential(nn.Flatten(), penultimate, nn.ReLU(), head).eval()
    rng = np.random.default_rng(0)
    X = (0.5 * rng.random((200, 1, 4, 4))).astype(np.float32)
    X_new = (0.5 * rng.random((200, 1, 4, 4))).astype(np.float32)
    triggers = []
    for pixel in (0, 15):
        mask = np.zeros((4, 4), np.float32)
        mask.flat[pixel] = 1.0
        triggers.append(Trigger(mask, np.ones((4, 4), np.float32)))
    standardized = ActivationFilter(model, triggers).fit(X)
    raw = ActivationFilter(model, triggers, neuron_ranking="gap").fit(X)
    assert [set(n) for n in standardized.neurons_] == [set(range(8)), set(range(8, 16))]
    assert standardized.predict(X_new).mean() <= 0.10
    for trigger in triggers:
        assert standardized.predict(trigger.apply(X_new)).mean() >= 0.95
    assert raw.predict(triggers[1].apply(X_new)).mean() <= 0.2  # what the raw score misses

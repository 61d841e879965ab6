"""NeuronPruner: Neural Cleanse §VI-B neuron pruning on the embedded benchmarks."""

import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from contracts import raises_naming, watch

from backdoorlearn import NeuronPruner
from backdoorlearn.metrics import attack_success_rate, clean_accuracy


def _scores(model, bench):
    return (clean_accuracy(bench.y_test, model.predict(bench.X_test)),
            attack_success_rate(bench.y_test, model.predict(bench.X_test_triggered), bench.target_label))


def _fit_and_check(bench):
    with watch(bench.backdoored_model, bench.X_holdout) as w:
        p = NeuronPruner(bench.trigger).fit(bench.backdoored_model, bench.X_holdout, bench.y_holdout)
    w.assert_unchanged()
    acc0, _ = _scores(bench.backdoored_model, bench)
    acc, asr = _scores(p.repaired_model_, bench)
    assert asr <= 0.10, f"attack success {asr:.3f}"
    assert acc0 - acc <= 0.05, f"clean accuracy {acc0:.3f} -> {acc:.3f}"
    return p


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: ASR <= 10% for <= 5 points of clean accuracy on signs; benchmarks/results/repairs.txt, "
    "'NeuronPruner (true trigger)'"))
def test_neuron_pruning_target_signs(signs_bench):
    p = _fit_and_check(signs_bench)
    assert p.layer_ == "fc1" and p.target_labels_ == [signs_bench.target_label]
    assert p.attack_success_pruned_ < p.attack_success_threshold
    # highest activation gap first
    assert p.activation_gap_[p.pruned_units_].min() >= np.delete(p.activation_gap_, p.pruned_units_).max()
    w = p.repaired_model_.module_.fc1.weight
    assert torch.count_nonzero(w[p.pruned_units_]) == 0
    net = pickle.loads(pickle.dumps(p.repaired_model_))
    assert torch.count_nonzero(net.module_.fc1.weight[p.pruned_units_]) == 0


@pytest.mark.filterwarnings("ignore:NeuronPruner")
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: ASR <= 10% for <= 5 points of clean accuracy on digits; benchmarks/results/repairs.txt, "
    "'NeuronPruner (true trigger)'"))
def test_neuron_pruning_target_digits(digits_bench):
    _fit_and_check(digits_bench)


def test_curve_and_stop_rule(signs_bench):
    b = signs_bench
    p = NeuronPruner({b.target_label: b.trigger}, layer="fc1", attack_success_threshold=0.2,
                     max_accuracy_drop=1.0).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert not p.budget_reached_
    c = p.pruning_curve_
    k = len(p.pruned_units_)
    assert c.attack_success[c.n_pruned == k][0] < 0.2
    assert np.all(c.attack_success[c.n_pruned < k] >= 0.2)
    assert p.accuracy_pruned_ == pytest.approx(c.clean_accuracy[c.n_pruned == k][0])


def test_accuracy_budget_stops_the_pruning_and_says_so(signs_bench):
    b = signs_bench
    unbounded = NeuronPruner(b.trigger, layer="fc1", max_accuracy_drop=1.0).fit(
        b.backdoored_model, b.X_holdout, b.y_holdout)
    assert unbounded.accuracy_before_ - unbounded.accuracy_pruned_ > 0.05  # the trigger costs more than 5 points
    with pytest.warns(UserWarning, match="max_accuracy_drop=0.05 .* stopped the pruning before the trigger"):
        p = NeuronPruner(b.trigger, layer="fc1").fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    assert p.budget_reached_ and p.repair_ok_
    assert p.accuracy_before_ - p.accuracy_pruned_ <= 0.05
    assert len(p.pruned_units_) < len(unbounded.pruned_units_)


def test_layer_choice_tries_the_layers_nearest_the_head(signs_bench):
    b = signs_bench
    with pytest.warns(UserWarning):
        p = NeuronPruner(b.trigger).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    cand = p.layer_candidates_
    assert cand.layer == ["fc1", "conv3", "conv2"] and p.layer_ in cand.layer
    i = cand.layer.index(p.layer_)
    # none disables the trigger within the budget here: the one leaving the least attack success is kept
    assert not cand.disabled.any() and cand.attack_success[i] == cand.attack_success.min()
    assert p.attack_success_pruned_ == cand.attack_success[i]


def test_max_prune_ratio_warns(digits_bench):
    b = digits_bench
    with pytest.warns(UserWarning, match="still"):
        p = NeuronPruner(b.trigger, layer="conv2", attack_success_threshold=0.01, max_prune_ratio=0.1).fit(
            b.backdoored_model, b.X_holdout, b.y_holdout)
    assert len(p.pruned_units_) == 3


def test_errors(digits_bench):
    b = digits_bench
    m, X, y = b.backdoored_model, b.X_holdout, b.y_holdout
    with raises_naming("y", match="y in NeuronPruner is required"):
        NeuronPruner(b.trigger).fit(m, X, None)
    with raises_naming("layer", match="layer='nope' is not a layer"):
        NeuronPruner(b.trigger, layer="nope").fit(m, X, y)
    with raises_naming("layer", match="layer='relu2' must name a convolution or linear layer"):
        NeuronPruner(b.trigger, layer="relu2").fit(m, X, y)
    black_box = LogisticRegression(max_iter=50).fit(X.reshape(len(X), -1), y)
    with pytest.raises(TypeError, match="NeuronPruner needs a white-box model"):
        NeuronPruner(b.trigger).fit(black_box, X, y)
    with raises_naming("target_label", match="target_label in NeuronPruner"):
        NeuronPruner(b.trigger, target_label=12).fit(m, X, y)
    with raises_naming("max_prune_ratio"):
        NeuronPruner(b.trigger, max_prune_ratio=1.0).fit(m, X, y)


# ---------------------------------------------------------------- layers by structure, on the zoo's shapes
_X8 = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
_Y8 = np.arange(30) % 3


@pytest.mark.filterwarnings("ignore:NeuronPruner")
def test_prunes_hidden_units_of_an_mlp():
    from backdoorlearn import Trigger
    from backdoorlearn.models import MLP, ModelAdapter, model_fingerprint

    model = MLP((1, 8, 8), 3, hidden=(16, 8))
    before = model_fingerprint(model)
    p = NeuronPruner(Trigger.patch((1, 8, 8), size=3), layer="fc2", max_prune_ratio=0.5).fit(model, _X8, _Y8)
    assert model_fingerprint(model) == before
    assert p.layer_ == "fc2" and p.activation_layer_ == "relu2"
    assert len(p.activation_gap_) == 8 and len(p.pruned_units_) >= 1
    net = p.repaired_model_
    assert torch.count_nonzero(net.module_.fc2.weight[p.pruned_units_]) == 0
    assert np.abs(ModelAdapter(net).activations(_X8, "relu2")[:, p.pruned_units_]).max() == 0


@pytest.mark.filterwarnings("ignore:NeuronPruner")
def test_default_layer_feeds_the_head():
    from backdoorlearn import Trigger
    from backdoorlearn.models import ResidualCNN, VGGStyleCNN

    trigger = Trigger.patch((1, 8, 8), size=3)
    res = NeuronPruner(trigger, max_prune_ratio=0.5).fit(ResidualCNN(1, 3, widths=(4, 8)), _X8, _Y8)
    assert res.layer_candidates_.layer[0] == "layer2.conv2"
    res = NeuronPruner(trigger, layer="layer2.conv2", max_prune_ratio=0.5).fit(ResidualCNN(1, 3, widths=(4, 8)),
                                                                                _X8, _Y8)
    assert res.activation_layer_ == "layer2.relu2"
    vgg_net = VGGStyleCNN(1, 3, stages=((4,), (8, 8)), hidden=16)
    vgg = NeuronPruner(trigger, max_prune_ratio=0.5).fit(vgg_net, _X8, _Y8)
    assert vgg.layer_candidates_.layer[0] == "classifier.0"
    vgg = NeuronPruner(trigger, layer="classifier.0", max_prune_ratio=0.5).fit(vgg_net, _X8, _Y8)
    assert vgg.activation_layer_ == "classifier.1"
    with raises_naming("layer", match="must name a convolution or linear layer") as err:
        NeuronPruner(trigger, layer="layer2.relu2").fit(ResidualCNN(1, 3, widths=(4, 8)), _X8, _Y8)
    assert "Layers that qualify" in str(err.value) and "layer2.conv2" in str(err.value)

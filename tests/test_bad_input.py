"""Bad input gets a clear error or a documented handling, never a silent wrong answer (issue 14, findings 5-10).

Each test names the finding it covers; each failed before the fix it tests.
"""

import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import backdoorlearn as bl
from backdoorlearn import (
    ActivationFilter,
    FinePruner,
    GuardedClassifier,
    NeuronPruner,
    RepairWarning,
    STRIPDetector,
    Trigger,
    Unlearner,
)
from backdoorlearn.models import ModelAdapter, SmallCNN, inference_copy, model_fingerprint

from contracts import raises_naming, watch


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((40, 1, 8, 8), dtype=np.float32), np.arange(40) % 10


class _Constant(nn.Module):
    """A module whose output is ``value`` everywhere (NaN, inf, ...), through a real layer."""

    def __init__(self, value, n_classes=10):
        super().__init__()
        self.fc = nn.Linear(64, n_classes)
        self.value = value

    def forward(self, x):
        out = self.fc(x.reshape(len(x), -1))
        return out * 0 + self.value


# ---------------------------------------------------------------- 5. target labels of the triggers
@pytest.mark.parametrize("key, error, match", [
    (99, ValueError, r"in \[0, 9\]; got 99"),
    (-1, ValueError, "got -1"),
    (0.7, TypeError, "integer class label; got 0.7"),
    (True, TypeError, "integer class label"),
])
def test_neuron_pruner_refuses_a_target_label_out_of_range(images, key, error, match):
    X, y = images
    model = SmallCNN(1, 10)
    with watch(model, X, y) as w, raises_naming("triggers", error, match=match):
        NeuronPruner({key: Trigger.patch((1, 8, 8), size=2)}).fit(model, X, y)
    w.assert_unchanged()


def test_unlearner_and_target_label_refuse_a_bad_label(images):
    X, y = images
    trigger = Trigger.patch((1, 8, 8), size=2)
    with raises_naming("triggers", match="got 10"):
        Unlearner({10: trigger}, fine_tune_epochs=1).fit(SmallCNN(1, 10), X, y)
    with raises_naming("triggers", match="got -3"):
        Unlearner({-3: trigger}, fine_tune_epochs=1).fit(SmallCNN(1, 10), X, y)
    with raises_naming("target_label", match=r"in \[0, 9\]; got 10"):
        NeuronPruner(trigger, target_label=10).fit(SmallCNN(1, 10), X, y)


# ---------------------------------------------------------------- 6. NaN thresholds and NaN models
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_detectors_refuse_a_non_finite_threshold(images, value):
    X, _ = images
    model = SmallCNN(1, 10)
    with raises_naming("threshold", match="finite"):
        STRIPDetector(model, n_perturbations=4, threshold=value).fit(X)
    with raises_naming("threshold", match="finite"):
        ActivationFilter(model, Trigger.patch((1, 8, 8), size=2), threshold=value).fit(X)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_model_emitting_nan_or_inf_is_refused(images, value):
    X, y = images
    model = _Constant(value)
    with raises_naming("model", match="finite outputs"):
        STRIPDetector(model, n_perturbations=4, random_state=0).fit(X)
    with raises_naming("model", match="finite outputs"):
        ModelAdapter(model).predict_proba(X)
    with raises_naming("model", match="finite outputs"):
        FinePruner(prune_ratio=0.1, fine_tune_epochs=0).fit(model, X, y)


def test_a_black_box_emitting_nan_is_refused(images):
    X, _ = images

    class NaNBox:
        classes_ = np.arange(3)

        def predict_proba(self, X):
            return np.full((len(X), 3), np.nan)

    with raises_naming("model", match="finite outputs"):
        STRIPDetector(NaNBox(), n_perturbations=4, random_state=0).fit(X.reshape(40, -1))


# ---------------------------------------------------------------- 7. repairs that return broken models
@pytest.mark.parametrize("make", [
    lambda t: FinePruner(fine_tune_epochs=1),
    lambda t: Unlearner(t, fine_tune_epochs=1),
    lambda t: NeuronPruner({0: t}),
])
def test_repairs_refuse_fewer_images_than_classes(images, make):
    X, y = images
    model = SmallCNN(1, 10)
    repair = make(Trigger.patch((1, 8, 8), size=2))
    with watch(model, X, y) as w, raises_naming("X", match=r"one image per class of the model \(10\).*got 1 image"):
        repair.fit(model, X[:1], y[:1])
    w.assert_unchanged()


def test_a_diverged_fine_tuning_is_reported(images):
    X, y = images
    with pytest.warns(RepairWarning, match="NaN or infinity"):
        pruner = FinePruner(prune_ratio=0.25, fine_tune_epochs=3, lr=1e6, random_state=0).fit(SmallCNN(1, 10), X, y)
    assert pruner.repair_ok_ is False
    assert any("diverged" in p for p in pruner.repair_problems_)
    assert np.isnan(pruner.accuracy_repaired_)


def test_an_accuracy_loss_beyond_the_budget_is_reported(digits_bench):
    b = digits_bench
    X, y = b.X_holdout[:60], b.y_holdout[:60]
    # pruning alone, most channels: the clean accuracy collapses
    with pytest.warns(RepairWarning, match="more than the budget of 0.04"):
        pruner = FinePruner(prune_ratio=0.95, fine_tune_epochs=0).fit(b.backdoored_model, X, y)
    assert pruner.repair_ok_ is False
    assert pruner.accuracy_before_ - pruner.accuracy_repaired_ > 0.04
    # no fine-tuning: the repaired model is the pruned one the search measured
    assert pruner.accuracy_repaired_ == pytest.approx(pruner.accuracy_pruned_)
    assert pruner.accuracy_before_ == pytest.approx(pruner.pruning_curve_.clean_accuracy[0])


def test_a_good_repair_says_so(digits_bench):
    b = digits_bench
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepairWarning)
        pruner = FinePruner(prune_ratio=0.1, fine_tune_epochs=0).fit(b.backdoored_model, b.X_holdout,
                                                                     b.y_holdout)
    assert pruner.repair_ok_ is True and pruner.repair_problems_ == []
    assert pruner.accuracy_repaired_ == pytest.approx(pruner.score(b.X_holdout, b.y_holdout))


# ---------------------------------------------------------------- 8. probabilities instead of logits
class _Softmaxed(nn.Module):
    """``body`` with a final softmax: probabilities, not logits."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.softmax(self.body(x), dim=1)


def test_a_module_returning_probabilities_is_read_as_such(digits_bench):
    # STRIP around the softmaxed module scores exactly as around the module itself (the
    # entropy scale is kept), with a warning saying the outputs were taken for probabilities.
    b = digits_bench
    body = b.backdoored_model.module_
    model = _Softmaxed(body)
    with pytest.warns(UserWarning, match="model given to STRIPDetector returns probabilities"):
        strip = STRIPDetector(model, n_perturbations=8, random_state=0).fit(b.X_holdout)
    reference = STRIPDetector(body, n_perturbations=8, random_state=0).fit(b.X_holdout)
    np.testing.assert_allclose(strip.benign_scores_, reference.benign_scores_, rtol=1e-4, atol=1e-6)
    with pytest.warns(UserWarning, match="returns probabilities"):
        adapter = ModelAdapter(model)
        np.testing.assert_allclose(adapter.predict_proba(b.X_test[:20]), ModelAdapter(body).predict_proba(b.X_test[:20]),
                                   atol=1e-5)


def test_a_repair_of_a_probability_module_returns_a_right_net(digits_bench):
    b = digits_bench
    model = _Softmaxed(b.backdoored_model.module_)
    with watch(model) as w, pytest.warns(UserWarning, match="returns probabilities"):
        pruner = FinePruner(prune_ratio=0.1, fine_tune_epochs=0).fit(model, b.X_holdout, b.y_holdout)
    w.assert_unchanged()
    # the repaired net's probabilities are the module's, not a softmax of them
    np.testing.assert_allclose(pruner.predict_proba(b.X_holdout[:20]).sum(axis=1), 1, atol=1e-5)
    assert pruner.predict_proba(b.X_holdout[:20]).max(axis=1).mean() > 0.5
    assert pruner.score(b.X_holdout, b.y_holdout) > 0.9


def test_logits_that_are_not_a_simplex_pass(images):
    X, _ = images
    # non-negative logits (a final ReLU) whose rows do not sum to 1 are logits
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
    assert ModelAdapter(model).logits(X).shape == (40, 10)


# ---------------------------------------------------------------- 9. answers independent of the other rows
def _strip(model, X, **kw):
    return STRIPDetector(model, n_perturbations=8, random_state=0, **kw).fit(X)


@pytest.mark.parametrize("batch_size", [1024, 5])  # many inputs per forward pass, or one input over several
def test_strip_scores_do_not_depend_on_the_other_rows(digits_bench, batch_size):
    b = digits_bench
    strip = _strip(b.backdoored_model, b.X_holdout, batch_size=batch_size)
    X = np.concatenate([b.X_test[:30], b.X_test_triggered[:30]])
    together = strip.score_samples(X)
    one_by_one = np.array([strip.score_samples(x[None])[0] for x in X])
    perm = np.random.default_rng(1).permutation(len(X))
    np.testing.assert_allclose(one_by_one, together, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(strip.score_samples(X[perm]), together[perm], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(strip.predict(X[perm]), strip.predict(X)[perm])
    # a pool image scored later gets its benign score (the same draws as at fit)
    np.testing.assert_allclose(strip.score_samples(b.X_holdout[[7, 3]]), strip.benign_scores_[[7, 3]],
                               rtol=1e-5, atol=1e-7)


def test_strip_scores_stay_reproducible_and_depend_on_random_state(digits_bench):
    b = digits_bench
    X = b.X_test[:20]
    first = _strip(b.backdoored_model, b.X_holdout).score_samples(X)
    np.testing.assert_array_equal(_strip(b.backdoored_model, b.X_holdout).score_samples(X), first)
    other = STRIPDetector(b.backdoored_model, n_perturbations=8, random_state=1).fit(b.X_holdout)
    assert not np.allclose(other.score_samples(X), first)


def test_black_box_strip_and_guarded_answers_do_not_depend_on_the_other_rows(digits_bench):
    from sklearn.neural_network import MLPClassifier

    b = digits_bench
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    mlp = MLPClassifier((32,), max_iter=60, random_state=0).fit(flat(b.X_train), b.y_train)
    guarded = GuardedClassifier(mlp, STRIPDetector(mlp, n_perturbations=8, random_state=0)).fit(flat(b.X_holdout))
    X = flat(np.concatenate([b.X_test[:20], b.X_test_triggered[:20]]))
    together = guarded.predict(X)
    np.testing.assert_array_equal([guarded.predict(x[None])[0] for x in X], together)
    perm = np.random.default_rng(2).permutation(len(X))
    np.testing.assert_array_equal(guarded.predict(X[perm]), together[perm])


# ---------------------------------------------------------------- 10. the user's module keeps its flags
def _flags(module):
    return [m.training for m in module.modules()]


class _Dropping(nn.Module):
    """Dropout and batch norm: a forward in train mode is random and updates the running stats."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(4 * 64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(h.reshape(len(h), -1))))


def test_defenses_never_switch_the_users_module_to_eval(images):
    X, y = images
    model = _Dropping().train()
    seen, stop = [], threading.Event()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the user trains, the weights stay put

    def user_thread():
        while not stop.is_set():
            seen.append(all(_flags(model)))
            with torch.enable_grad():
                loss = model(torch.from_numpy(X[:4])).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    thread = threading.Thread(target=user_thread)
    thread.start()
    try:
        trigger = Trigger.patch((1, 8, 8), size=2)
        for _ in range(3):
            STRIPDetector(model, n_perturbations=8, random_state=0).fit(X).predict(X)
            ActivationFilter(model, trigger, layer="fc1").fit(X).predict(X)
            ModelAdapter(model).predict_proba(X)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 0 and all(seen), f"the user's thread saw eval mode in {seen.count(False)} of {len(seen)}"
    assert all(_flags(model))


def test_inference_copy_is_in_eval_mode_and_shares_the_weights(images):
    X, _ = images
    model = _Dropping().train()
    before = model_fingerprint(model)
    view = inference_copy(model)
    assert not any(_flags(view)) and all(_flags(model))
    assert all(a is b for a, b in zip(view.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(view.buffers(), model.buffers()))
    x = torch.from_numpy(X)
    with torch.no_grad():
        first, second = view(x), view(x)
        torch.testing.assert_close(first, second)  # dropout off
        ref = model.eval()(x)  # the same as the module in eval mode (running stats)
        model.train()
        torch.testing.assert_close(first, ref)
    assert model_fingerprint(model) == before  # running stats untouched by the view's forwards
    # hooks registered on the copy never fire on the user's module
    fired = []
    view.fc1.register_forward_hook(lambda *_: fired.append(1))
    with torch.no_grad():
        model(x)
    assert fired == []


def test_torchscript_module_keeps_its_flags(images):
    X, _ = images
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5),
                                              nn.Flatten(), nn.Linear(4 * 36, 10))).train()
    strip = STRIPDetector(scripted, n_perturbations=4, random_state=0).fit(X)
    assert strip.predict(X).shape == (40,)
    assert scripted.training and all(m.training for m in scripted.modules())

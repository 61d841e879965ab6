"""Bad input gets a clear error or a documented handling, never a silent wrong answer (issue 14, findings 11-16
and the "Also" list).

Each test names the finding it covers; each failed on the code before its fix, unless its docstring says
otherwise.
"""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import backdoorlearn as bl
from backdoorlearn import metrics
from backdoorlearn.models import ModelAdapter, SmallCNN, wrap_module

from contracts import raises_naming, watch


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((40, 1, 8, 8), dtype=np.float32), np.arange(40) % 10


# ---------------------------------------------------------------- 15. metrics refuse nonsense
@pytest.mark.parametrize("call, argument", [
    (lambda: metrics.attack_success_rate([1, 2, 3], [0, 0, 0], None), "target_label"),
    (lambda: metrics.attack_success_rate([1, 2, 3], [0, 0, 0], [0, None, 0]), "target_label"),
    (lambda: metrics.attack_success_rate([1, 2, 3], [0, 0, 0], [0, 0]), "target_label"),
    (lambda: metrics.robust_accuracy([1, 2, 3], [0, 0, 0], np.zeros((3, 1))), "target_label"),
    (lambda: metrics.make_attack_success_scorer(None), "target_label"),
    (lambda: metrics.clean_accuracy(np.zeros((2, 3)), np.zeros((3, 2))), "y_true"),
    (lambda: metrics.clean_accuracy([0, 1, 2], np.zeros((3, 2))), "y_pred"),
    (lambda: metrics.false_rejection_rate(np.zeros((2, 2)), np.zeros((2, 2))), "y_true"),
])
def test_metrics_refuse_what_has_no_meaning(call, argument):
    with raises_naming(argument):
        call()


def test_metrics_still_take_columns_and_per_input_targets():
    assert metrics.clean_accuracy(np.array([[1], [2]]), [1, 2]) == 1.0
    assert metrics.attack_success_rate([1, 2, 3], [0, 0, 3], [0, 0, 0]) == pytest.approx(2 / 3)
    assert metrics.attack_success_rate(["a", "b"], ["t", "b"], "t") == 0.5


# ---------------------------------------------------------------- 12. reject_label of the classes' kind
def _logreg(images):
    from sklearn.linear_model import LogisticRegression

    X, y = images
    X = X.reshape(len(X), -1)
    return X, LogisticRegression(max_iter=200).fit(X, y)


@pytest.mark.parametrize("make", [
    lambda m, r: bl.GuardedClassifier(m, bl.STRIPDetector(None, n_perturbations=4, random_state=0), reject_label=r),
    lambda m, r: bl.BimodelClassifier(m, m, reject_label=r),
], ids=["guarded", "bimodel"])
def test_a_reject_label_of_another_kind_than_the_classes_is_refused(images, make):
    X, model = _logreg(images)
    with raises_naming("reject_label", TypeError, match="must be a number.*got 'rejected'"):
        make(model, "rejected").fit(X)
    with raises_naming("reject_label", match="one of the model's classes"):
        make(model, 3).fit(X)
    fitted = make(model, -1).fit(X)
    assert fitted.classes_.dtype.kind == "i" and fitted.predict(X).dtype.kind == "i"
    string_y = np.array(list("abcdefghij"))[images[1]]
    from sklearn.linear_model import LogisticRegression

    named = LogisticRegression(max_iter=200).fit(X, string_y)
    with raises_naming("reject_label", TypeError, match="must be a string"):
        make(named, 10).fit(X)
    assert make(named, "rejected").fit(X).predict(X).dtype.kind in "UO"


def test_bimodel_predict_changes_no_attribute(images):
    X, model = _logreg(images)
    bbd = bl.BimodelClassifier(model, model, target_labels=[0]).fit(X)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(bbd).items()}
    bbd.predict(X)
    bbd.cross_examine(X)
    assert vars(bbd).keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(vars(bbd)[key], value) if isinstance(value, np.ndarray) else None
    assert 0 <= bbd.cross_examine(X).asked.mean() <= 1


# ---------------------------------------------------------------- 13. common mistakes, clear messages
def _defenses(model, X, y, **kw):
    trigger = bl.Trigger.patch((1, 8, 8), size=2)
    return {
        "STRIPDetector": lambda: bl.STRIPDetector(model, n_perturbations=4, random_state=0, **kw).fit(X),
        "ActivationFilter": lambda: bl.ActivationFilter(model, trigger, **kw).fit(X),
        "NeuralCleanse": lambda: bl.NeuralCleanse(steps=1, **kw).fit(model, X, y),
        "FinePruner": lambda: bl.FinePruner(prune_ratio=0.1, fine_tune_epochs=0, **kw).fit(model, X, y),
        "NeuronPruner": lambda: bl.NeuronPruner({0: trigger}, **kw).fit(model, X, y),
        "Unlearner": lambda: bl.Unlearner(trigger, fine_tune_epochs=1, **kw).fit(model, X, y),
        "BimodelClassifier": lambda: bl.BimodelClassifier(model, model, **kw).fit(X).predict(X),
        "ModelAdapter": lambda: ModelAdapter(model, **kw).predict(X),
    }


@pytest.mark.parametrize("name", sorted(_defenses(None, None, None)))
def test_a_wrong_channel_count_names_x_and_the_channels(images, name):
    X, y = images
    model = SmallCNN(1, 10)
    X3 = np.repeat(X, 3, axis=1)
    with watch(model, X3) as w, raises_naming("X", match=r"1 channel\(s\) on axis 1.*got 3"):
        _defenses(model, X3, y)[name]()
    w.assert_unchanged()


@pytest.mark.parametrize("name", sorted(_defenses(None, None, None)))
def test_a_float64_module_is_refused_naming_model(images, name):
    X, y = images
    model = SmallCNN(1, 10).double()
    with raises_naming("model", TypeError, match="float32 parameters.*got float64"):
        _defenses(model, X, y)[name]()


@pytest.mark.parametrize("device, match", [("tpu", "'tpu'"), ("mps", "no mps device here"),
                                           ("cuda:0" if not torch.cuda.is_available() else "tpu:0", "here|'tpu:0'")])
@pytest.mark.parametrize("name", sorted(_defenses(None, None, None)))
def test_an_unavailable_device_is_refused_naming_device(images, name, device, match):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    X, y = images
    with raises_naming("device", match=match):
        _defenses(SmallCNN(1, 10), X, y, device=device)[name]()


def test_anti_backdoor_learner_refuses_an_unavailable_device(images):
    X, y = images
    with raises_naming("device", match="AntiBackdoorLearner.*'tpu'"):
        bl.AntiBackdoorLearner(SmallCNN, device="tpu").fit(X, y)


def test_a_wrong_input_width_names_x_for_a_linear_model(images):
    X, _ = images
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with raises_naming("X", match="inputs of 64 values.*got inputs of shape \\(1, 9, 9\\)"):
        ModelAdapter(mlp).predict(np.zeros((2, 1, 9, 9), np.float32))


def test_neural_cleanse_no_longer_blames_the_shape_of_x(images):
    X, y = images

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            raise RuntimeError("something inside the model")

    with raises_naming("model", match="model in NeuralCleanse could not run on X.*something inside") as info:
        bl.NeuralCleanse(steps=1).fit(Fails(), X, y)
    assert "does not match the model's input" not in str(info.value)


def test_other_image_sizes_are_refused_through_adaptive_pooling(images):
    # SmallCNN pools adaptively: a 16x16 image runs and gets an answer unless the fitted shape is checked
    X, y = images
    model = SmallCNN(1, 10)
    big = np.zeros((3, 1, 16, 16), np.float32)
    bbd = bl.BimodelClassifier(model, model).fit(X)
    with raises_naming("X", match=r"samples of shape \(1, 8, 8\), as at fit; got \(1, 16, 16\)"):
        bbd.predict(big)
    pruner = bl.FinePruner(prune_ratio=0.1, fine_tune_epochs=0).fit(model, X, y)
    with raises_naming("X", match=r"images of shape \(1, 8, 8\).*got \(1, 16, 16\)"):
        pruner.repaired_model_.predict(big)


# ---------------------------------------------------------------- 14. wrap_module's classes
def test_wrap_module_refuses_classes_that_do_not_match_the_outputs(images):
    X, _ = images
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    net = wrap_module(module, classes=[0, 1, 2])
    with raises_naming("classes", match="3 labels but its module returns 10 outputs"):
        net.predict(X)
    with raises_naming("model", match="declares 3 classes"):
        ModelAdapter(net).predict(X)
    with raises_naming("classes", match="one label per output of the module \\(5\\)"):
        module.n_classes = 5
        wrap_module(module, classes=[0, 1, 2])
    with raises_naming("classes", match="must list"):
        wrap_module(nn.Linear(64, 3), classes=[])


def test_wrap_module_predicts_string_classes(images):
    X, _ = images
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    net = wrap_module(module, classes=["cat", "dog", "owl"])
    pred = net.predict(X)
    assert set(pred) <= {"cat", "dog", "owl"}
    np.testing.assert_array_equal(pred, np.array(["cat", "dog", "owl"])[net.predict_proba(X).argmax(axis=1)])
    np.testing.assert_array_equal(ModelAdapter(net).predict(X), pred)
    assert net.score(X, pred) == 1.0


# ---------------------------------------------------------------- 16. one rule for float64 and (n, H, W)
@pytest.mark.parametrize("name", ["FinePruner", "NeuronPruner", "Unlearner"])
def test_repaired_models_take_what_the_repair_took(images, name):
    X, y = images
    model = SmallCNN(1, 10)
    X64, X3 = X.astype(np.float64), X[:, 0].astype(np.float64)  # scikit-learn's load_digits().images / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bl.RepairWarning)
        fitted = {"FinePruner": lambda: bl.FinePruner(prune_ratio=0.1, fine_tune_epochs=1, random_state=0),
                  "NeuronPruner": lambda: bl.NeuronPruner({0: bl.Trigger.patch((1, 8, 8), size=2)}),
                  "Unlearner": lambda: bl.Unlearner(bl.Trigger.patch((1, 8, 8), size=2), fine_tune_epochs=1,
                                                    random_state=0)}[name]().fit(model, X3, y)
    net = fitted.repaired_model_
    expected = net.predict(X)
    for data in (X64, X3, X[:, 0]):
        np.testing.assert_array_equal(net.predict(data), expected)
        np.testing.assert_array_equal(fitted.predict(data), expected)
    assert net.predict_proba(X3).dtype == np.float32
    assert 0 <= net.score(X64, y) <= 1


def test_every_entry_point_reads_n_h_w_as_one_channel(images):
    X, y = images
    model = SmallCNN(1, 10)
    X3 = X[:, 0]
    np.testing.assert_allclose(bl.STRIPDetector(model, n_perturbations=4, random_state=0).fit(X3).benign_scores_,
                               bl.STRIPDetector(model, n_perturbations=4, random_state=0).fit(X).benign_scores_,
                               rtol=1e-5)
    np.testing.assert_array_equal(ModelAdapter(model).predict(X3), ModelAdapter(model).predict(X))
    np.testing.assert_array_equal(bl.BimodelClassifier(model, model).fit(X3).predict(X3),
                                  bl.BimodelClassifier(model, model).fit(X).predict(X))
    net = wrap_module(model, classes=range(10))
    np.testing.assert_array_equal(net.predict(X3.astype(np.float64)), net.predict(X))


# ---------------------------------------------------------------- also: smaller contracts
def test_poisoner_with_no_eligible_row_warns_and_poisons_none(images):
    X, _ = images
    y = np.zeros(len(X), np.int64)  # every row already has the target label
    poisoner = bl.BackdoorPoisoner(bl.Trigger.patch((1, 8, 8), size=2), target_label=0, poison_rate=0.5)
    with watch(X, y) as w, pytest.warns(UserWarning, match="only 0 rows are eligible"):
        X_p, y_p = poisoner.fit_resample(X, y)
    w.assert_unchanged()
    np.testing.assert_array_equal(X_p, X)
    np.testing.assert_array_equal(y_p, y)
    assert poisoner.n_poisoned_ == 0 and poisoner.poison_indices_.size == 0


@pytest.mark.parametrize("labels", [np.full(40, 2), np.full(40, -1), np.array(["benign"] * 40),
                                    np.arange(40) % 3])
def test_strip_fit_refuses_labels_other_than_0_and_1(images, labels):
    X, _ = images
    with raises_naming("y", match="0 \\(benign\\) and 1 \\(trojaned\\) only"):
        bl.STRIPDetector(SmallCNN(1, 10), n_perturbations=4, random_state=0).fit(X, labels)


def test_strip_fit_takes_0_1_and_booleans(images):
    X, _ = images
    mask = np.arange(40) % 4 == 0
    as_int = bl.STRIPDetector(SmallCNN(1, 10), n_perturbations=4, random_state=0).fit(X, mask.astype(int))
    as_bool = bl.STRIPDetector(SmallCNN(1, 10), n_perturbations=4, random_state=0).fit(X, mask)
    assert len(as_int.benign_scores_) == len(as_bool.benign_scores_) == 30


def test_load_weights_not_strict_refuses_a_file_with_no_matching_key(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with raises_naming(str(path), match="strict=False.*none does"):
        bl.models.load_weights(SmallCNN(1, 10), path, strict=False)
    partial = tmp_path / "partial.pt"
    net = SmallCNN(1, 10)
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("classifier")}, partial)
    loaded = bl.models.load_weights(SmallCNN(1, 10), partial, strict=False)
    torch.testing.assert_close(loaded.classifier.weight, net.classifier.weight)


def test_read_only_arrays_reach_torch_without_a_warning(images):
    X, y = images
    X = X.copy()
    X.flags.writeable = False
    y = y.copy()
    y.flags.writeable = False
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not writable.*")
        bl.STRIPDetector(SmallCNN(1, 10), n_perturbations=4, random_state=0).fit(X).predict(X)
        ModelAdapter(SmallCNN(1, 10)).predict(X)
        bl.FinePruner(prune_ratio=0.1, fine_tune_epochs=1, random_state=0).fit(SmallCNN(1, 10), X, y).predict(X)
        bl.NeuralCleanse(steps=1, random_state=0).fit(SmallCNN(1, 10), X, y)
        wrap_module(SmallCNN(1, 10), classes=range(10)).predict(X)


@pytest.mark.parametrize("batch_size", [2.7, 0, True, "8"])
def test_batch_size_must_be_a_positive_integer(batch_size):
    with raises_naming("batch_size", match=f"positive integer; got {batch_size!r}"):
        ModelAdapter(SmallCNN(1, 10), batch_size=batch_size)

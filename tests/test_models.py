import copy
import pickle

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPClassifier
from sklearn.svm import LinearSVC
from torch import nn

from contracts import watch

from backdoorlearn.models import ModelAdapter, SmallCNN, build_net, wrap_module


@pytest.fixture(scope="module")
def X8():
    return np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)


@pytest.mark.parametrize("shape, channels", [((1, 8, 8), (16, 32)), ((3, 32, 32), (16, 32, 32)),
                                             ((1, 28, 28), (8, 16)), ((3, 9, 11), (8,))])
def test_small_cnn_shapes(shape, channels):
    net = SmallCNN(in_channels=shape[0], n_classes=7, channels=channels)
    assert net(torch.zeros((2,) + shape)).shape == (2, 7)
    names = dict(net.named_modules())
    assert isinstance(names[net.last_conv_name], nn.Conv2d)
    assert net.last_conv_name == f"conv{len(channels)}"
    assert isinstance(names[net.penultimate_name], nn.ReLU)


def test_small_cnn_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_classes"):
        SmallCNN(n_classes=1)


def test_module_skorch_and_copy_agree(digits_bench):
    net = digits_bench.backdoored_model
    X = digits_bench.X_test[:64]
    p_net = net.predict_proba(X)
    p_skorch = ModelAdapter(net).predict_proba(X)
    p_module = ModelAdapter(net.module_).predict_proba(X)
    p_copy = ModelAdapter(net).copy().predict_proba(X)
    np.testing.assert_allclose(p_skorch, p_net, atol=1e-6)
    np.testing.assert_allclose(p_module, p_net, atol=1e-6)
    np.testing.assert_allclose(p_copy, p_net, atol=1e-6)
    assert np.array_equal(ModelAdapter(net).predict(X), net.predict(X))


def test_adapter_leaves_model_unchanged(digits_bench):
    net = digits_bench.backdoored_model
    net.module_.train()
    with watch(net) as w:  # weights and the train/eval flags
        adapter = ModelAdapter(net)
        adapter.predict_proba(digits_bench.X_test[:10])
        adapter.activations(digits_bench.X_test[:10], "conv2")
        adapter.copy().module.fc1.weight.data.zero_()
    net.module_.eval()
    w.assert_unchanged()


def test_activations_and_layers(digits_bench):
    adapter = ModelAdapter(digits_bench.clean_model)
    acts = adapter.activations(digits_bench.X_test[:10], adapter.default_conv_layer())
    assert acts.shape == (10, 32, 4, 4)
    pen = adapter.activations(digits_bench.X_test[:10], adapter.default_penultimate_layer())
    assert pen.shape == (10, 64) and (pen >= 0).all()
    assert "classifier" in adapter.named_layers()
    with pytest.raises(ValueError, match="layer='nope' is not a layer"):
        adapter.get_layer("nope")
    with pytest.raises(ValueError, match="must name a convolution"):
        adapter.get_layer("fc1", types=nn.Conv2d, what="convolution")


def test_default_layers_of_a_plain_module():
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5), nn.ReLU(),
                           nn.Linear(5, 3))
    adapter = ModelAdapter(module)
    X = np.zeros((1, 1, 8, 8), np.float32)
    assert adapter.default_conv_layer(X) == "0"
    assert adapter.default_penultimate_layer(X) == "4"
    assert adapter.n_classes(X) == 3
    # the structure is read from a forward pass: without a sample there is none to read
    with pytest.raises(ValueError, match="needs a sample input"):
        adapter.default_conv_layer()


def test_black_box_estimator(X8):
    X = X8.reshape(40, -1)
    y = np.arange(40) % 4
    mlp = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(X, y)
    adapter = ModelAdapter(mlp, defense="NeuralCleanse")
    np.testing.assert_allclose(adapter.predict_proba(X), mlp.predict_proba(X), rtol=1e-5)
    assert adapter.n_classes() == 4 and not adapter.is_white_box
    with pytest.raises(TypeError, match="NeuralCleanse needs a white-box model"):
        adapter.logits(X)
    with pytest.raises(TypeError, match="NeuralCleanse needs a white-box model"):
        adapter.named_layers()


def test_non_classifier_is_rejected(X8):
    svc = LinearSVC().fit(X8.reshape(40, -1), np.arange(40) % 2)
    with pytest.raises(TypeError, match="STRIP needs a classifier.*LinearSVC"):
        ModelAdapter(svc, defense="STRIP")


def test_uninitialized_skorch_net():
    net = build_net(SmallCNN, module__in_channels=1, module__n_classes=3)
    with pytest.raises(NotFittedError, match="not initialized"):
        ModelAdapter(net).module


def test_nll_skorch_net_outputs_probabilities(X8):
    from skorch import NeuralNetClassifier

    class ProbNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = SmallCNN(1, 3)

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    net = NeuralNetClassifier(ProbNet, max_epochs=1, train_split=None).fit(X8, np.arange(40) % 3)
    adapter = ModelAdapter(net)
    np.testing.assert_allclose(adapter.predict_proba(X8), net.predict_proba(X8), atol=1e-6)
    logits = adapter.logits(X8)
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), net.predict_proba(X8),
                               atol=1e-5)


def test_wrap_module_is_a_fitted_net_and_pickles(digits_bench, tmp_path):
    module = copy.deepcopy(digits_bench.clean_model.module_)
    net = wrap_module(module, classes=range(10))
    X, y = digits_bench.X_test, digits_bench.y_test
    np.testing.assert_allclose(net.predict_proba(X), digits_bench.clean_model.predict_proba(X), atol=1e-6)
    assert net.score(X, y) > 0.9
    assert list(net.classes_) == list(range(10))
    back = pickle.loads(pickle.dumps(net))
    np.testing.assert_allclose(back.predict_proba(X[:5]), net.predict_proba(X[:5]), atol=1e-6)


def test_device_other_than_the_module_works_on_a_copy(X8):
    module = SmallCNN(1, 4)
    adapter = ModelAdapter(module, device="cpu")
    runtime = adapter.runtime_module  # an eval-mode copy sharing the module's tensors
    assert all(a is b for a, b in zip(runtime.parameters(), module.parameters()))
    assert adapter.device == "cpu"
    with pytest.raises((ValueError, TypeError)):
        ModelAdapter(module, device="cuda" if not torch.cuda.is_available() else 3).device


def test_bad_inputs_to_adapter(X8):
    adapter = ModelAdapter(SmallCNN(1, 4))
    with pytest.raises(ValueError, match="NaN"):
        adapter.predict_proba(np.full((2, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="at least 1 sample"):
        adapter.predict_proba(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        ModelAdapter(SmallCNN(1, 4), batch_size=0)


def test_weights_roundtrip_and_refuse_code(digits_bench, tmp_path):
    import torch

    from backdoorlearn.models import load_weights, save_weights

    path = tmp_path / "w.pt"
    save_weights(digits_bench.clean_model, path)
    module = load_weights(SmallCNN(1, 10, pooled_size=4), path)
    X = digits_bench.X_test[:8]
    np.testing.assert_allclose(ModelAdapter(module).predict_proba(X),
                               digits_bench.clean_model.predict_proba(X), atol=1e-6)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights only|unsupported|global"):
        load_weights(SmallCNN(1, 10), tmp_path / "evil.pt")


class _SequentialHead(nn.Module):
    """A head that is an nn.Sequential holding one nn.Linear (the logits)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


def _zoo_shapes():
    from backdoorlearn.models import MLP, ResidualCNN, VGGStyleCNN

    # (module, last conv of the main path, penultimate layer)
    return [
        (ResidualCNN(1, 3, widths=(4, 8, 8)), "layer3.conv2", "avgpool"),  # not layer3.downsample.0
        (VGGStyleCNN(1, 3, stages=((4,), (8, 8)), hidden=16), "features.7", "classifier.1"),
        (MLP((1, 8, 8), 3, hidden=(16, 8)), None, "relu2"),
        (_SequentialHead(), "features.0", "features.6"),  # not "head", the logits
    ]


@pytest.mark.parametrize("module, conv, penultimate", _zoo_shapes(), ids=lambda v: type(v).__name__)
def test_default_layers_by_structure(module, conv, penultimate, X8):
    adapter = ModelAdapter(module)
    assert adapter.default_penultimate_layer(X8) == penultimate
    acts = adapter.activations(X8, penultimate)
    head = dict(module.named_modules())[{"avgpool": "fc", "classifier.1": "classifier.3", "relu2": "head",
                                         "features.6": "head.0"}[penultimate]]
    assert acts.reshape(len(X8), -1).shape[1] == head.in_features  # what the classifier reads, not the logits
    if conv is None:
        with pytest.raises(ValueError, match="found no convolution"):
            adapter.default_conv_layer(X8)
    else:
        assert adapter.default_conv_layer(X8) == conv


def test_unit_sites_are_where_units_are_used(X8):
    from backdoorlearn.models import ResidualCNN
    from backdoorlearn.models._surgery import unit_site

    adapter = ModelAdapter(ResidualCNN(1, 3, widths=(4, 8)))
    site = unit_site(adapter, X8, "layer2.conv2")
    # after the BatchNorm, the residual add and the ReLU; the shortcut's channels are zeroed too
    assert site.point == "layer2.relu2" and site.exact
    assert set(site.zero) == {"layer2.conv2", "layer2.bn2", "layer2.downsample.1"}
    # an identity shortcut cannot be silenced by weights
    assert not unit_site(ModelAdapter(ResidualCNN(1, 3, widths=(4,))), X8, "layer1.conv2").exact
    with pytest.raises(ValueError, match="final classifier layer") as err:
        unit_site(adapter, X8, "fc")
    assert "layer2.conv2" in str(err.value)


def test_small_cnn_gap_is_called(X8):
    # pooled to the size the map already has (4x4 after one pooling of 8x8) and to a smaller one
    for pooled, side in ((4, 4), (2, 2)):
        net = SmallCNN(1, 3, pooled_size=pooled)
        acts = ModelAdapter(net).activations(X8, "gap")
        assert acts.shape == (len(X8), 32, side, side)


def test_activations_of_a_layer_never_called(X8):
    module = _SequentialHead()
    module.unused = nn.Linear(3, 3)  # defined, never called by forward
    with pytest.raises(ValueError, match="never calls"):
        ModelAdapter(module).activations(X8, "unused")

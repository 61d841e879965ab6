"""Safe model loading: TorchScript, state_dict + architecture, and the CSAW HackML Keras files.

The Keras files are written here in the exact layout Keras 2.2.4 writes (as in the challenge's
``*_bd_weights.h5`` and ``*_bd_net.h5``), from random weights, and the loaded torch DeepID is
held against a numpy forward pass that computes channels last, as Keras does.
"""

import json
import os
import pickle
import sys
import warnings

import h5py  # in the `tests` extra
import numpy as np
import pytest
import torch
from torch import nn

from backdoorlearn.models import DeepID, ModelAdapter, SmallCNN, load_keras_h5, load_model

KERNELS = {  # Keras layouts: conv (kh, kw, in, out), dense (in, out)
    "conv_1": (4, 4, 3, 20),
    "conv_2": (3, 3, 20, 40),
    "conv_3": (3, 3, 40, 60),
    "conv_4": (2, 2, 60, 80),
    "fc_1": (5 * 4 * 60, 160),
    "fc_2": (4 * 3 * 80, 160),
}
LAYER_NAMES = ["input", "conv_1", "pool_1", "conv_2", "pool_2", "conv_3", "pool_3", "conv_4", "flatten_1",
               "flatten_2", "fc_1", "fc_2", "add_1", "activation_1", "output"]


def keras_weights(n_classes, seed=0):
    """Random weights in Keras' layouts, scaled so activations stay of order one."""
    rng = np.random.default_rng(seed)
    shapes = dict(KERNELS, output=(160, n_classes))
    weights = {}
    for layer, shape in shapes.items():
        fan_in = int(np.prod(shape[:-1]))
        kernel = rng.normal(0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        weights[layer] = (kernel, rng.normal(0, 0.1, size=shape[-1]).astype(np.float32))
    return weights


# ------------------------------------------------------------------ numpy reference (channels last)
def _conv_valid(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # (n, h', w', c, kh, kw)
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias


def _max_pool(x):
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def keras_reference(X, weights):
    """architecture.py's forward pass in numpy: NHWC, Flatten over (H, W, C); returns the logits."""
    w = {k: (kern.astype(np.float64), b.astype(np.float64)) for k, (kern, b) in weights.items()}
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    x = X.transpose(0, 2, 3, 1).astype(np.float64)  # the challenge's eval.py: transpose((0, 2, 3, 1))
    x = _max_pool(relu(_conv_valid(x, *w["conv_1"])))
    x = _max_pool(relu(_conv_valid(x, *w["conv_2"])))
    pool_3 = _max_pool(relu(_conv_valid(x, *w["conv_3"])))
    fc_1 = pool_3.reshape(len(X), -1) @ w["fc_1"][0] + w["fc_1"][1]
    conv_4 = relu(_conv_valid(pool_3, *w["conv_4"]))
    fc_2 = conv_4.reshape(len(X), -1) @ w["fc_2"][0] + w["fc_2"][1]
    return relu(fc_1 + fc_2) @ w["output"][0] + w["output"][1]


# ------------------------------------------------------------------ Keras 2.2.4's HDF5 layout
def _write_layers(group, weights, layer_names=LAYER_NAMES):
    # h5py 2.x, which Keras 2.2.4 ran on, stored these lists as fixed-length byte strings and an
    # empty list as an empty float64 array; the challenge's files hold exactly that.
    group.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
    group.attrs["backend"] = np.bytes_(b"tensorflow")
    group.attrs["keras_version"] = np.bytes_(b"2.2.4")
    for layer in layer_names:
        g = group.create_group(layer)
        if layer in weights:
            names = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
            g.attrs["weight_names"] = np.array(names)
            for wname, value in zip(names, weights[layer]):
                g.create_dataset(wname.decode(), data=value)
        else:
            g.attrs["weight_names"] = np.array([], dtype=np.float64)


def write_weights_h5(path, weights):
    """A ``*_bd_weights.h5`` (``model.save_weights``)."""
    with h5py.File(path, "w") as f:
        _write_layers(f, weights)
    return path


def keras_config(n_classes):
    """``model.get_config()`` of architecture.py's Net() as Keras 2.2.4 serializes it."""
    def node(*sources):
        return [[[s, 0, 0, {}] for s in sources]]

    def conv(name, filters, k, src):
        return {"name": name, "class_name": "Conv2D", "inbound_nodes": node(src), "config": {
            "name": name, "trainable": True, "filters": filters, "kernel_size": [k, k], "strides": [1, 1],
            "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "relu",
            "use_bias": True, "kernel_initializer": {"class_name": "VarianceScaling", "config": {
                "scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None}}

    def pool(name, src):
        return {"name": name, "class_name": "MaxPooling2D", "inbound_nodes": node(src), "config": {
            "name": name, "trainable": True, "pool_size": [2, 2], "padding": "valid", "strides": [2, 2],
            "data_format": "channels_last"}}

    def dense(name, units, activation, src):
        return {"name": name, "class_name": "Dense", "inbound_nodes": node(src), "config": {
            "name": name, "trainable": True, "units": units, "activation": activation, "use_bias": True,
            "kernel_initializer": {"class_name": "VarianceScaling", "config": {}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None}}

    def flatten(name, src):
        return {"name": name, "class_name": "Flatten", "inbound_nodes": node(src),
                "config": {"name": name, "trainable": True, "data_format": "channels_last"}}

    layers = [
        {"name": "input", "class_name": "InputLayer", "inbound_nodes": [], "config": {
            "batch_input_shape": [None, 55, 47, 3], "dtype": "float32", "sparse": False, "name": "input"}},
        conv("conv_1", 20, 4, "input"), pool("pool_1", "conv_1"),
        conv("conv_2", 40, 3, "pool_1"), pool("pool_2", "conv_2"),
        conv("conv_3", 60, 3, "pool_2"), pool("pool_3", "conv_3"),
        conv("conv_4", 80, 2, "pool_3"),
        flatten("flatten_1", "pool_3"), flatten("flatten_2", "conv_4"),
        dense("fc_1", 160, "linear", "flatten_1"), dense("fc_2", 160, "linear", "flatten_2"),
        {"name": "add_1", "class_name": "Add", "inbound_nodes": node("fc_1", "fc_2"),
         "config": {"name": "add_1", "trainable": True}},
        {"name": "activation_1", "class_name": "Activation", "inbound_nodes": node("add_1"),
         "config": {"name": "activation_1", "trainable": True, "activation": "relu"}},
        dense("output", n_classes, "softmax", "activation_1"),
    ]
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input", 0, 0]],
                                              "output_layers": [["output", 0, 0]]}}


def write_full_h5(path, weights, config=None):
    """A ``*_bd_net.h5`` (``model.save``): model_config, training_config, model_weights, optimizer_weights."""
    n_classes = weights["output"][0].shape[1]
    config = keras_config(n_classes) if config is None else config
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(b"2.2.4")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs["model_config"] = np.bytes_(json.dumps(config).encode("utf-8"))
        f.attrs["training_config"] = np.bytes_(json.dumps({
            "optimizer_config": {"class_name": "Adadelta", "config": {"lr": 1.0}},
            "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}).encode())
        _write_layers(f.create_group("model_weights"), weights)
        opt = f.create_group("optimizer_weights")
        names = [b"training/Adadelta/Variable:0", b"training/Adadelta/Variable_1:0"]
        opt.attrs["weight_names"] = np.array(names)
        opt.create_dataset(names[0].decode(), data=np.zeros(KERNELS["conv_1"], np.float32))
        opt.create_dataset(names[1].decode(), data=np.zeros(20, np.float32))
    return path


@pytest.fixture(scope="module")
def faces():
    return np.random.default_rng(1).random((5, 3, 55, 47), dtype=np.float32)


def _logits(module, X):
    with torch.no_grad():
        return module(torch.from_numpy(X)).numpy()


# ------------------------------------------------------------------ DeepID
def test_deepid_matches_the_challenge_architecture():
    net = DeepID()
    assert sum(p.numel() for p in net.parameters()) == 601_643  # Keras' model.summary() of the BadNets
    assert net(torch.zeros(2, 3, 55, 47)).shape == (2, 1283)
    assert net.flatten_shapes == {"fc_1": (60, 5, 4), "fc_2": (80, 4, 3)}
    adapter = ModelAdapter(net)
    assert adapter.default_conv_layer() == "conv_3"
    assert isinstance(adapter.get_layer("conv_4"), nn.Conv2d)
    acts = adapter.activations(np.zeros((2, 3, 55, 47), np.float32), adapter.default_penultimate_layer())
    assert acts.shape == (2, 160) and (acts >= 0).all()


def test_deepid_small_and_other_sizes():
    assert DeepID(n_classes=3)(torch.zeros(1, 3, 55, 47)).shape == (1, 3)
    net = DeepID(n_classes=4, in_channels=1, input_size=(31, 31))
    assert net(torch.zeros(2, 1, 31, 31)).shape == (2, 4)


def test_deepid_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="n_classes >= 2"):
        DeepID(n_classes=1)
    with pytest.raises(ValueError, match="at least 31x31 pixels.*input_size=\\(20, 20\\)"):
        DeepID(input_size=(20, 20))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 3, 55, 47\), channels first; "
                                         r"got \[2, 55, 47, 3\]"):
        DeepID()(torch.zeros(2, 55, 47, 3))


# ------------------------------------------------------------------ Keras HDF5
@pytest.mark.parametrize("n_classes", [7, 1283])
def test_weights_only_file_matches_numpy_reference(tmp_path, faces, n_classes):
    weights = keras_weights(n_classes)
    net = load_keras_h5(write_weights_h5(tmp_path / "sunglasses_bd_weights.h5", weights))
    assert isinstance(net, DeepID) and not net.training and net.output.out_features == n_classes
    reference = keras_reference(faces, weights)
    assert np.abs(reference).max() > 0.5  # the comparison is not between near-zero outputs
    np.testing.assert_allclose(_logits(net, faces), reference, rtol=0, atol=1e-4)


def test_full_model_file_matches_numpy_reference(tmp_path, faces):
    weights = keras_weights(11, seed=2)
    path = write_full_h5(tmp_path / "sunglasses_bd_net.h5", weights)
    net = load_keras_h5(path)
    reference = keras_reference(faces, weights)
    np.testing.assert_allclose(_logits(net, faces), reference, rtol=0, atol=1e-4)
    # the Keras model's softmax output, from the torch logits
    probs = torch.softmax(torch.from_numpy(_logits(net, faces)), 1).numpy()
    expected = np.exp(reference - reference.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_flatten_order_matters(tmp_path, faces):
    """A loader that skipped the (H, W, C) -> (C, H, W) permutation would not match."""
    weights = keras_weights(5, seed=3)
    net = load_keras_h5(write_weights_h5(tmp_path / "w.h5", weights))
    naive = DeepID(n_classes=5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["fc_1.weight"] = torch.from_numpy(weights["fc_1"][0].T.copy())
    naive.load_state_dict(state)
    assert np.abs(_logits(naive, faces) - keras_reference(faces, weights)).max() > 1e-2


def test_h5py3_variable_length_names_and_chunked_layer_names(tmp_path, faces):
    """Newer writers store names as variable-length str; Keras splits a long list into layer_names0, 1, ..."""
    weights = keras_weights(6, seed=4)
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names0"] = LAYER_NAMES[:7]
        f.attrs["layer_names1"] = LAYER_NAMES[7:]
        for layer in LAYER_NAMES:
            g = f.create_group(layer)
            g.attrs["weight_names"] = [f"{layer}/kernel:0", f"{layer}/bias:0"] if layer in weights else []
            for role, value in zip(("kernel", "bias"), weights.get(layer, ())):
                g[f"{layer}/{role}:0"] = value
    np.testing.assert_allclose(_logits(load_keras_h5(path), faces), keras_reference(faces, weights), atol=1e-4)


def test_n_classes_is_checked(tmp_path):
    path = write_weights_h5(tmp_path / "w.h5", keras_weights(7))
    assert load_keras_h5(path, n_classes=7).output.out_features == 7
    with pytest.raises(ValueError, match="n_classes=1283 was requested but the file's output layer has 7"):
        load_keras_h5(path, n_classes=1283)


def _edit(weights, layer, kernel=None, bias=None):
    out = dict(weights)
    out[layer] = (weights[layer][0] if kernel is None else kernel, weights[layer][1] if bias is None else bias)
    return out


@pytest.mark.parametrize("change, message", [
    (lambda w: {k: v for k, v in w.items() if k != "conv_3"},
     r"layer 'conv_3' holds no weights \(expected kernel \(3, 3, 40, 60\) and bias \(60,\)\)"),
    (lambda w: _edit(w, "fc_1", kernel=np.zeros((1000, 160), np.float32)),
     r"weight fc_1/fc_1/kernel:0 has shape \(1000, 160\); the DeepID expects \(1200, 160\)"),
    (lambda w: _edit(w, "conv_2", kernel=np.zeros((40, 20, 3, 3), np.float32)),  # a torch layout
     r"weight conv_2/conv_2/kernel:0 has shape \(40, 20, 3, 3\); the DeepID expects \(3, 3, 20, 40\)"),
    (lambda w: _edit(w, "output", bias=np.zeros(8, np.float32)),
     r"weight output/output/kernel:0 has shape \(160, 7\); the DeepID expects \(160, 8\)"),
    (lambda w: _edit(w, "conv_4", bias=np.full(80, np.nan, np.float32)),
     r"weight conv_4/conv_4/bias:0 holds NaN or inf"),
    (lambda w: _edit(w, "fc_2", bias=np.zeros(160, np.int32)),
     r"weight fc_2/fc_2/bias:0 holds int32; floats were expected"),
])
def test_weights_that_do_not_fit_name_what_was_expected(tmp_path, change, message):
    path = write_weights_h5(tmp_path / "w.h5", change(keras_weights(7)))
    with pytest.raises(ValueError, match="does not hold the CSAW HackML DeepID: .*" + message):
        load_keras_h5(path)


def test_missing_dataset_and_extra_weighted_layer(tmp_path):
    path = write_weights_h5(tmp_path / "w.h5", keras_weights(7))
    with h5py.File(path, "a") as f:
        del f["conv_1/conv_1/bias:0"]
        f.attrs["layer_names"] = np.array([n.encode() for n in LAYER_NAMES if n != "fc_2"] + [b"batch_norm_1"])
        g = f.create_group("batch_norm_1")
        g.attrs["weight_names"] = np.array([b"batch_norm_1/gamma:0"])
        g["batch_norm_1/gamma:0"] = np.ones(20, np.float32)
    with pytest.raises(ValueError) as info:
        load_keras_h5(path)
    assert "layer 'conv_1' lists the weight 'conv_1/bias:0', which the file does not hold" in str(info.value)
    assert "layer 'batch_norm_1' holds weights ['batch_norm_1/gamma:0']" in str(info.value)
    assert "layer 'fc_2' is missing (expected kernel (960, 160) and bias (160,))" in str(info.value)


def _config_with(change):
    config = keras_config(7)
    layers = {entry["name"]: entry for entry in config["config"]["layers"]}
    change(layers)
    return config


@pytest.mark.parametrize("change, message", [
    (lambda L: L["conv_2"]["config"].update(padding="same"), r"conv_2 has padding='same'; expected 'valid'"),
    (lambda L: L["conv_1"]["config"].update(kernel_size=[5, 5]), r"conv_1 has kernel_size=\[5, 5\]; expected \[4, 4\]"),
    (lambda L: L["pool_3"].update(class_name="AveragePooling2D"),
     r"pool_3 is a Keras AveragePooling2D layer; expected MaxPooling2D"),
    (lambda L: L["fc_1"]["config"].update(activation="relu"), r"fc_1 has activation='relu'; expected 'linear'"),
    (lambda L: L["flatten_1"]["config"].update(data_format="channels_first"),
     r"flatten_1 has data_format='channels_first'; expected 'channels_last'"),
    (lambda L: L["conv_3"]["config"].update(data_format="channels_first"),
     r"conv_3 has data_format='channels_first'; expected 'channels_last'"),
    (lambda L: L["flatten_2"].update(inbound_nodes=[[["pool_3", 0, 0, {}]]]),
     r"fc_2 must see Flatten\(conv_4\)"),
    (lambda L: L["input"]["config"].update(batch_input_shape=[None, 64, 64, 3]),
     r"the input has shape \[None, 64, 64, 3\]; expected \[None, 55, 47, 3\]"),
    (lambda L: L["activation_1"]["config"].update(activation="tanh"), r"output must see relu\(fc_1 \+ fc_2\)"),
    (lambda L: L["output"]["config"].update(activation="sigmoid"), r"output has activation='sigmoid'"),
    (lambda L: L["conv_1"].update(inbound_nodes=[]), r"conv_1 is fed by None; expected 'InputLayer'"),
    (lambda L: L["pool_2"].update(inbound_nodes=[[["conv_1", 0, 0, {}]]]),
     r"pool_2 is fed by 'conv_1'; expected 'conv_2'"),
])
def test_full_model_config_is_checked(tmp_path, change, message):
    path = write_full_h5(tmp_path / "bd_net.h5", keras_weights(7), config=_config_with(change))
    with pytest.raises(ValueError, match="model_config does not describe the CSAW HackML DeepID: .*" + message):
        load_keras_h5(path)


def test_full_model_outputs_and_layer_names_are_checked(tmp_path):
    config = keras_config(7)
    config["config"]["output_layers"] = [["activation_1", 0, 0]]
    path = write_full_h5(tmp_path / "bd_net.h5", keras_weights(7), config=config)
    with pytest.raises(ValueError, match=r"the model's outputs are \['activation_1'\]; expected \['output'\]"):
        load_keras_h5(path)
    path = write_full_h5(tmp_path / "bd_net2.h5", keras_weights(7))
    with h5py.File(path, "a") as f:
        del f["model_weights"].attrs["layer_names"]
    with pytest.raises(ValueError, match="/model_weights has no 'layer_names' attribute"):
        load_keras_h5(path)


def test_full_model_config_gives_the_classes(tmp_path):
    path = write_full_h5(tmp_path / "bd_net.h5", keras_weights(7), config=keras_config(9))
    with pytest.raises(ValueError, match=r"weight output/output/kernel:0 has shape \(160, 7\); "
                                         r"the DeepID expects \(160, 9\)"):
        load_keras_h5(path)


def test_dropout_between_layers_is_looked_through(tmp_path, faces):
    def add_dropout(L):
        L["drop"] = {"name": "drop", "class_name": "Dropout", "inbound_nodes": [[["activation_1", 0, 0, {}]]],
                     "config": {"name": "drop", "rate": 0.5}}
        L["output"]["inbound_nodes"] = [[["drop", 0, 0, {}]]]

    config = keras_config(7)
    layers = {e["name"]: e for e in config["config"]["layers"]}
    add_dropout(layers)
    config["config"]["layers"] = list(layers.values())
    weights = keras_weights(7)
    net = load_keras_h5(write_full_h5(tmp_path / "bd_net.h5", weights, config=config))
    np.testing.assert_allclose(_logits(net, faces), keras_reference(faces, weights), atol=1e-4)


def test_not_a_keras_model(tmp_path):
    data = tmp_path / "clean_validation_data.h5"
    with h5py.File(data, "w") as f:
        f["data"] = np.zeros((2, 3, 55, 47), np.uint8)
        f["label"] = np.zeros(2)
    with pytest.raises(ValueError, match="not a Keras model file: expected a root attribute 'layer_names'.*"
                                         "read it with backdoorlearn.datasets.load_hackml_h5"):
        load_keras_h5(data)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        load_keras_h5(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_keras_h5(tmp_path / "nope.h5")


def test_truncated_hdf5(tmp_path):
    path = write_weights_h5(tmp_path / "w.h5", keras_weights(7))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_keras_h5(path)


def _hostile(tmp_path, make):
    path = write_weights_h5(tmp_path / "w.h5", keras_weights(7))
    with h5py.File(path, "a") as f:
        make(f, tmp_path)
    return path


def _external_storage(f, tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(np.zeros(20, np.float32).tobytes())
    del f["conv_1/conv_1/bias:0"]
    f["conv_1"].create_dataset("conv_1/bias:0", shape=(20,), dtype="f4", external=[(str(raw), 0, 80)])


def _virtual(f, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.zeros(20, np.float32)
    layout = h5py.VirtualLayout(shape=(20,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "x", shape=(20,))
    del f["conv_1/conv_1/bias:0"]
    f["conv_1"].create_virtual_dataset("conv_1/bias:0", layout)


def _external_link(f, tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as g:
        g["bias"] = np.zeros(20, np.float32)
    del f["conv_1/conv_1/bias:0"]
    f["conv_1/conv_1/bias:0"] = h5py.ExternalLink(str(other), "/bias")


def _soft_link(f, tmp_path):
    f["conv_2/conv_2/alias"] = h5py.SoftLink("/conv_1/conv_1/kernel:0")


def _huge(f, tmp_path):
    # 4 TiB declared, a few bytes on disk: chunked and never written
    f.create_dataset("optimizer_state", shape=(2**20, 2**20), dtype="f4", chunks=(64, 64))


def _cycle(f, tmp_path):
    f["conv_1/loop"] = f["conv_1"]  # a hard link back to its own parent group


@pytest.mark.parametrize("make, message", [
    (_external_storage, r"/conv_1/conv_1/bias:0 keeps its data in external files"),
    (_virtual, r"/conv_1/conv_1/bias:0 is a virtual dataset"),
    (_external_link, r"/conv_1/conv_1/bias:0 is an external link to .*other.h5:/bias"),
    (_soft_link, r"/conv_2/conv_2/alias is a soft link to /conv_1/conv_1/kernel:0"),
    (_huge, r"/optimizer_state declares shape \(1048576, 1048576\) of float32 \(4398046511104 bytes"),
    (_cycle, r"/conv_1/loop/loop/.* is nested deeper than 16 groups \(a link cycle\?\)"),
])
def test_hostile_hdf5_is_refused_before_reading(tmp_path, make, message):
    path = _hostile(tmp_path, make)
    with pytest.raises(ValueError, match="refused as unsafe to read: " + message):
        load_keras_h5(path)


def test_h5py_missing(tmp_path, monkeypatch):
    path = write_weights_h5(tmp_path / "w.h5", keras_weights(3))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install h5py \(or pip install backdoorlearn\[h5\]\)"):
        load_keras_h5(path)


# ------------------------------------------------------------------ load_model: TorchScript, state_dict, dispatch
def _quiet_jit(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates TorchScript in favour of torch.export
        return fn(*args)


def test_torchscript_round_trip(tmp_path):
    x = torch.rand(3, 3, 55, 47)
    deepid = DeepID(n_classes=9).eval()
    scripted = tmp_path / "deepid.pt"
    _quiet_jit(torch.jit.script, deepid).save(str(scripted))
    small = SmallCNN(in_channels=1, n_classes=10).eval()
    traced = tmp_path / "small.pt"
    _quiet_jit(torch.jit.trace, small, torch.zeros(1, 1, 8, 8)).save(str(traced))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the loader keeps torch's notice to itself
        loaded = load_model(scripted, device="cpu")
    assert isinstance(loaded, torch.jit.ScriptModule) and not loaded.training
    torch.testing.assert_close(loaded(x), deepid(x))
    x8 = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(load_model(traced)(x8), small(x8))
    with pytest.raises(ValueError, match="arch and arch_kwargs apply to state_dict files only; .*TorchScript"):
        load_model(scripted, arch="backdoorlearn.models:DeepID")


def test_loaded_torchscript_copies_and_runs_neural_cleanse(tmp_path):
    from backdoorlearn import NeuralCleanse

    path = tmp_path / "small.pt"
    _quiet_jit(torch.jit.trace, SmallCNN(in_channels=1, n_classes=4).eval(), torch.zeros(1, 1, 8, 8)).save(str(path))
    loaded = load_model(path)
    copied = ModelAdapter(loaded).copy().module
    assert all(p.is_leaf and p.requires_grad for p in copied.parameters())
    for p in copied.parameters():
        p.requires_grad_(False)  # raised "can only change requires_grad flags of leaf variables"
    assert all(p.requires_grad for p in loaded.parameters())
    X = np.random.default_rng(0).random((24, 1, 8, 8), dtype=np.float32)
    nc = NeuralCleanse(steps=2, random_state=0).fit(loaded, X, np.arange(24) % 4)
    assert nc.l1_norms_.shape == (4,)


@pytest.mark.parametrize("arch, arch_kwargs", [
    ("backdoorlearn.models:SmallCNN", '{"in_channels": 1, "n_classes": 10, "channels": [8, 16]}'),
    ("backdoorlearn.models:SmallCNN", {"in_channels": 1, "n_classes": 10, "channels": [8, 16]}),
    (SmallCNN, {"in_channels": 1, "n_classes": 10, "channels": (8, 16)}),
])
def test_state_dict_round_trip(tmp_path, arch, arch_kwargs):
    net = SmallCNN(in_channels=1, n_classes=10, channels=(8, 16)).eval()
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(path, arch=arch, arch_kwargs=arch_kwargs)
    assert isinstance(loaded, SmallCNN) and not loaded.training
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net(x))


def test_state_dict_legacy_format_and_factory(tmp_path):
    net = DeepID(n_classes=4).eval()
    path = tmp_path / "legacy.pt"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    loaded = load_model(path, arch=lambda: DeepID(n_classes=4))  # a factory in the place of a class
    x = torch.rand(2, 3, 55, 47)
    torch.testing.assert_close(loaded(x), net(x))


def test_state_dict_needs_an_architecture_that_fits(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(SmallCNN(in_channels=1, n_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match="holds a state_dict \\(weights only\\): pass arch='package.module:Class'"):
        load_model(path)
    with pytest.raises(ValueError, match=r"does not fit the architecture arch='backdoorlearn.models:SmallCNN': "
                                         r"shape mismatches: classifier.weight is \(10, 64\) in the file, "
                                         r"\(3, 64\) in the architecture, classifier.bias is \(10,\)"):
        load_model(path, arch="backdoorlearn.models:SmallCNN", arch_kwargs='{"in_channels": 1, "n_classes": 3}')
    with pytest.raises(ValueError) as info:
        load_model(path, arch="backdoorlearn.models:DeepID", arch_kwargs={"n_classes": 10})
    message = str(info.value)
    assert "missing keys (in the architecture, not in the file): conv_1.weight, conv_1.bias" in message
    assert "unexpected keys (in the file, not in the architecture): conv1.weight, conv1.bias" in message
    wrapped = tmp_path / "wrapped.pt"
    torch.save(nn.DataParallel(SmallCNN()).state_dict(), wrapped)
    with pytest.raises(ValueError, match="carry the prefix 'module.' of a model wrapped by nn.DataParallel"):
        load_model(wrapped, arch="backdoorlearn.models:SmallCNN")


@pytest.mark.parametrize("arch, arch_kwargs, error, message", [
    ("backdoorlearn.models.SmallCNN", None, ValueError, r"arch must be an import path 'package.module:Class'"),
    ("no_such_package.models:Net", None, ValueError, r"the module 'no_such_package.models' cannot be imported"),
    ("backdoorlearn.models:NoSuchNet", None, ValueError, r"the module 'backdoorlearn.models' has no attribute"),
    ("collections:OrderedDict", None, TypeError, r"must be a torch.nn.Module subclass .*OrderedDict"),
    ("os:system", None, TypeError, r"must be a torch.nn.Module subclass"),
    ("backdoorlearn.models:SmallCNN", '{"in_channels": 1, "n_classes": 10', ValueError,
     r"arch_kwargs must be a JSON object"),
    ("backdoorlearn.models:SmallCNN", "[1, 10]", ValueError, r"arch_kwargs must give keyword arguments"),
    ("backdoorlearn.models:SmallCNN", '{"colour": true}', ValueError,
     r"could not be built with arch_kwargs=\{'colour': True\}"),
    ("backdoorlearn.models:build_net", None, ValueError, r"could not be built"),
    (SmallCNN(), None, TypeError, r"not a module instance; .*load_weights"),
])
def test_bad_architecture(tmp_path, arch, arch_kwargs, error, message):
    path = tmp_path / "weights.pt"
    torch.save(SmallCNN().state_dict(), path)
    with pytest.raises(error, match=message):
        load_model(path, arch=arch, arch_kwargs=arch_kwargs)


class _Payload:
    """Unpickling this would create a directory: proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickled_objects_are_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    zipped = tmp_path / "payload.pt"
    torch.save(_Payload(str(marker)), zipped)
    with pytest.raises(ValueError, match=r"holds a pickled Python object \(it names \w+\.mkdir\).*refused.*"
                                         r"torch.save\(model.state_dict\(\), path\)"):
        load_model(zipped, arch="backdoorlearn.models:SmallCNN")
    raw = tmp_path / "payload.pkl"
    raw.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ValueError, match="is a Python pickle, which is refused"):
        load_model(raw)
    assert not marker.exists()


def test_whole_module_is_refused_with_what_to_save_instead(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(SmallCNN(), path)
    with pytest.raises(ValueError, match=r"\(it names backdoorlearn.models._zoo.SmallCNN\), not weights only.*"
                                         r"or save a TorchScript archive") as info:
        load_model(path, arch="backdoorlearn.models:SmallCNN")
    assert "weights_only=False" not in str(info.value)  # torch's own advice is not passed on


def test_checkpoint_dict_is_named(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "state_dict": SmallCNN().state_dict()}, path)
    with pytest.raises(ValueError, match=r"the entries 'epoch', 'state_dict' are not tensors. "
                                         r"It looks like a training checkpoint"):
        load_model(path, arch="backdoorlearn.models:SmallCNN")


def _zip(path, entries):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for entry in entries:
            archive.writestr(entry, b"x")
    return path


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b""), r"not a model file of a supported kind \(expected a TorchScript archive, "
                                   r"a state_dict written by torch.save, or a Keras HDF5 file of the CSAW "
                                   r"HackML DeepID\); an empty file"),
    (lambda p: p.write_text("name,value\n"), r"its first bytes are b'name,value\\n'"),
    (lambda p: np.savez(p.open("wb"), X=np.zeros(3)), r"zip archive of an unsupported kind .* entries: X.npy. "
                                                       r"It looks like a numpy .npz archive"),
    (lambda p: _zip(p, ["config.json", "metadata.json", "model.weights.h5"]), r"a Keras 3 '.keras' archive"),
    (lambda p: p.write_bytes((12).to_bytes(8, "little") + b'{"a": "b"}  ' + b"\0" * 16),
     r"looks like a safetensors file"),
])
def test_unsupported_kinds(tmp_path, write, message):
    path = tmp_path / "model.bin"
    write(path)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_truncated_torch_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(SmallCNN().state_dict(), path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="starts like a zip archive .* truncated or corrupt"):
        load_model(path, arch="backdoorlearn.models:SmallCNN")
    legacy = tmp_path / "legacy.pt"
    torch.save(SmallCNN().state_dict(), legacy, _use_new_zipfile_serialization=False)
    blob = legacy.read_bytes()
    legacy.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cannot be read as a torch.save file: truncated or corrupt"):
        load_model(legacy, arch="backdoorlearn.models:SmallCNN")


def test_keras_files_go_to_load_keras_h5(tmp_path, faces):
    weights = keras_weights(7)
    for path in (write_weights_h5(tmp_path / "bd_weights.h5", weights), write_full_h5(tmp_path / "bd_net.h5", weights)):
        net = load_model(path)  # told apart by content, whatever the name
        assert isinstance(net, DeepID)
        np.testing.assert_allclose(_logits(net, faces), keras_reference(faces, weights), atol=1e-4)
    with pytest.raises(ValueError, match="arch and arch_kwargs apply to state_dict files only; .* HDF5"):
        load_model(tmp_path / "bd_net.h5", arch="backdoorlearn.models:DeepID")
    hostile = _hostile(tmp_path, _soft_link)
    with pytest.raises(ValueError, match="refused as unsafe to read"):
        load_model(hostile)


def test_missing_file_and_bad_device(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a file"):
        load_model(tmp_path / "nope.pt")
    if not torch.cuda.is_available():
        path = write_weights_h5(tmp_path / "w.h5", keras_weights(3))
        with pytest.raises(ValueError, match="device='cuda' was requested but CUDA is not available"):
            load_model(path, device="cuda")

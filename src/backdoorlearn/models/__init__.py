"""How backdoorlearn holds a model: the adapter and the reference networks."""

from ._adapter import ModelAdapter, build_net, eval_mode, model_fingerprint, wrap_module
from ._architectures import MLP, ResidualCNN, VGGStyleCNN
from ._deepid import DeepID
from ._io import load_keras_h5, load_model, load_weights, save_weights
from ._zoo import SmallCNN

__all__ = [
    "DeepID",
    "MLP",
    "ResidualCNN",
    "VGGStyleCNN",
    "ModelAdapter",
    "SmallCNN",
    "build_net",
    "eval_mode",
    "load_keras_h5",
    "load_model",
    "load_weights",
    "model_fingerprint",
    "save_weights",
    "wrap_module",
]

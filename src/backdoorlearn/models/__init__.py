"""How backdoorlearn holds, builds, trains and cuts a model."""

from ._adapter import ModelAdapter, eval_mode, inference_copy, model_fingerprint
from ._architectures import MLP, ResidualCNN, VGGStyleCNN
from ._deepid import DeepID
from ._io import load_keras_h5, load_model, load_weights, save_weights
from ._surgery import UnitMask
from ._training import ImageClassifierNet, build_net, train_classifier, wrap_module
from ._zoo import SmallCNN

__all__ = [
    "DeepID",
    "ImageClassifierNet",
    "MLP",
    "ResidualCNN",
    "VGGStyleCNN",
    "ModelAdapter",
    "SmallCNN",
    "UnitMask",
    "build_net",
    "eval_mode",
    "inference_copy",
    "load_keras_h5",
    "load_model",
    "load_weights",
    "model_fingerprint",
    "save_weights",
    "train_classifier",
    "wrap_module",
]

"""How backdoorlearn holds a model: the adapter and the reference networks."""

from ._adapter import ModelAdapter, build_net, eval_mode, model_fingerprint, wrap_module
from ._zoo import SmallCNN

__all__ = ["ModelAdapter", "SmallCNN", "build_net", "eval_mode", "model_fingerprint", "wrap_module"]

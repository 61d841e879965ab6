"""backdoorlearn: defenses against backdoor (trojan) attacks, with a scikit-learn API.

The public API is flat: ``from backdoorlearn import Trigger, BackdoorPoisoner``.
"""

from . import datasets, metrics, models
from .attacks import BackdoorPoisoner
from .datasets import load_digits, make_backdoor_benchmark, make_traffic_signs
from .models import ModelAdapter, SmallCNN, wrap_module
from .triggers import Trigger

__version__ = "0.1.0.dev0"

__all__ = [
    "BackdoorPoisoner",
    "ModelAdapter",
    "SmallCNN",
    "Trigger",
    "datasets",
    "load_digits",
    "make_backdoor_benchmark",
    "make_traffic_signs",
    "metrics",
    "models",
    "wrap_module",
    "__version__",
]

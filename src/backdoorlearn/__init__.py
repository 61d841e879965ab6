"""backdoorlearn: defenses against backdoor (trojan) attacks, with a scikit-learn API.

The public API is flat: ``from backdoorlearn import Trigger, BackdoorPoisoner``.
"""

from . import audit, datasets, grading, metrics, models
from .attacks import BackdoorPoisoner, PruningAwareAttack
from .datasets import load_digits, make_backdoor_benchmark, make_traffic_signs
from .detection import STRIPDetector
from .ensemble import BimodelClassifier, GuardedClassifier
from .detection import ActivationFilter
from .inspection import NeuralCleanse
from .models import ModelAdapter, SmallCNN, wrap_module
from .repair import FinePruner, NeuronPruner, RepairWarning, Unlearner
from .training import AntiBackdoorLearner
from .triggers import Trigger

__version__ = "0.1.0.dev0"

__all__ = [
    "ActivationFilter",
    "AntiBackdoorLearner",
    "BackdoorPoisoner",
    "BimodelClassifier",
    "FinePruner",
    "GuardedClassifier",
    "ModelAdapter",
    "NeuralCleanse",
    "NeuronPruner",
    "PruningAwareAttack",
    "RepairWarning",
    "SmallCNN",
    "STRIPDetector",
    "Trigger",
    "Unlearner",
    "audit",
    "datasets",
    "grading",
    "load_digits",
    "make_backdoor_benchmark",
    "make_traffic_signs",
    "metrics",
    "models",
    "wrap_module",
    "__version__",
]

"""Repairs that return a clean model: pruning, fine-pruning, unlearning."""

from ._base import BaseRepair, RepairWarning
from ._fine_pruning import FinePruner
from ._neuron_pruning import NeuronPruner
from ._unlearning import Unlearner

__all__ = ["BaseRepair", "FinePruner", "NeuronPruner", "RepairWarning", "Unlearner"]

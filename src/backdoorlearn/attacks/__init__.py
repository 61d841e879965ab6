"""Backdoor attacks, to make backdoored models to study (teaching, tests, benchmarks)."""

from ._badnets import BackdoorPoisoner
from ._pruning_aware import PruningAwareAttack

__all__ = ["BackdoorPoisoner", "PruningAwareAttack"]

"""Serve a model safely: combine a model with a detector or a repaired model."""

from ._bimodel import BimodelClassifier
from ._guarded import GuardedClassifier

__all__ = ["BimodelClassifier", "GuardedClassifier"]

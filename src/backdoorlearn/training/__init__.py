"""Train a clean model on a possibly poisoned training set."""

from ._abl import AntiBackdoorLearner

__all__ = ["AntiBackdoorLearner"]

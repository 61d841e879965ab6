"""Display objects (matplotlib is imported lazily, when a plot is drawn)."""

from ._entropy import EntropyHistogramDisplay
from ._pruning import PruningCurveDisplay
from ._triggers import TriggerDisplay

__all__ = ["EntropyHistogramDisplay", "PruningCurveDisplay", "TriggerDisplay"]

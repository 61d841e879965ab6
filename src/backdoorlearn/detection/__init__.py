"""Input-level defenses: is this input carrying a trigger?"""

from ._activation_filter import ActivationFilter
from ._base import BaseDetector
from ._strip import STRIPDetector

__all__ = ["ActivationFilter", "BaseDetector", "STRIPDetector"]

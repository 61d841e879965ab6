"""Input-level defenses: is this input carrying a trigger?"""

from ._base import BaseDetector

__all__ = ["BaseDetector"]

"""Embedded data (nothing is downloaded) and the backdoor benchmark."""

from ._benchmark import default_trigger, make_backdoor_benchmark
from ._digits import load_digits
from ._signs import make_traffic_signs

__all__ = ["default_trigger", "load_digits", "make_backdoor_benchmark", "make_traffic_signs"]

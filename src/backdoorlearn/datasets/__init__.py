"""Embedded data (nothing is downloaded) and the backdoor benchmark."""

from ._benchmark import default_trigger, make_backdoor_benchmark
from ._digits import load_digits
from ._loaders import load_cifar10, load_gtsrb, load_hackml_h5, load_mnist
from ._signs import make_traffic_signs

__all__ = [
    "default_trigger",
    "load_cifar10",
    "load_digits",
    "load_gtsrb",
    "load_hackml_h5",
    "load_mnist",
    "make_backdoor_benchmark",
    "make_traffic_signs",
]

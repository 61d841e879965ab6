"""Embedded data (nothing is downloaded) and the backdoor benchmark."""

from ._benchmark import default_trigger, make_backdoor_benchmark
from ._cifar10 import load_cifar10
from ._digits import load_digits
from ._data_files import load_data_file, load_image_folder
from ._gtsrb import load_gtsrb
from ._hackml import load_hackml_h5
from ._mnist import load_mnist
from ._mnist5k import load_mnist5k
from ._signs import make_traffic_signs
from ._zoo import (ZooModel, ZooSpec, ZooTruth, get_data_home, load_zoo_model, make_model_zoo, make_trigger,
                   zoo_specs)

__all__ = [
    "ZooModel",
    "ZooSpec",
    "ZooTruth",
    "get_data_home",
    "load_mnist5k",
    "load_zoo_model",
    "make_model_zoo",
    "make_trigger",
    "zoo_specs",
    "default_trigger",
    "load_cifar10",
    "load_data_file",
    "load_digits",
    "load_image_folder",
    "load_gtsrb",
    "load_hackml_h5",
    "load_mnist",
    "make_backdoor_benchmark",
    "make_traffic_signs",
]

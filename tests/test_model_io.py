"""DeepID, the CSAW HackML face network in torch."""

import numpy as np
import pytest
import torch
from torch import nn

from backdoorlearn.models import DeepID, ModelAdapter


# ------------------------------------------------------------------ DeepID
def test_deepid_matches_the_challenge_architecture():
    net = DeepID()
    assert sum(p.numel() for p in net.parameters()) == 601_643  # Keras' model.summary() of the BadNets
    assert net(torch.zeros(2, 3, 55, 47)).shape == (2, 1283)
    assert net.flatten_shapes == {"fc_1": (60, 5, 4), "fc_2": (80, 4, 3)}
    adapter = ModelAdapter(net)
    assert adapter.default_conv_layer() == "conv_3"
    assert isinstance(adapter.get_layer("conv_4"), nn.Conv2d)
    acts = adapter.activations(np.zeros((2, 3, 55, 47), np.float32), adapter.default_penultimate_layer())
    assert acts.shape == (2, 160) and (acts >= 0).all()


def test_deepid_small_and_other_sizes():
    assert DeepID(n_classes=3)(torch.zeros(1, 3, 55, 47)).shape == (1, 3)
    net = DeepID(n_classes=4, in_channels=1, input_size=(31, 31))
    assert net(torch.zeros(2, 1, 31, 31)).shape == (2, 4)


def test_deepid_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="n_classes >= 2"):
        DeepID(n_classes=1)
    with pytest.raises(ValueError, match="at least 31x31 pixels.*input_size=\\(20, 20\\)"):
        DeepID(input_size=(20, 20))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(n, 3, 55, 47\), channels first; "
                                         r"got \[2, 55, 47, 3\]"):
        DeepID()(torch.zeros(2, 55, 47, 3))

"""The DeepID face network of the CSAW HackML 2020 BadNets, in torch."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

__all__ = ["DeepID"]


def _conv_size(size, kernel):
    return size - kernel + 1  # "valid" padding, stride 1


class DeepID(nn.Module):
    """The DeepID-style face classifier of the CSAW HackML 2020 challenge.

    The backdoored models (BadNets) of the challenge are Keras 2 models of
    this network trained on 55x47 colour faces of the 1283 people of the
    YouTube Aligned Face data set. The layers follow the challenge's
    ``architecture.py`` and carry its Keras names, so that weights map one
    to one (:func:`load_keras_h5` reads the challenge's ``.h5`` files):

    - ``conv_1`` (20 filters 4x4), ``pool_1`` (2x2 max pooling),
      ``conv_2`` (40, 3x3), ``pool_2``, ``conv_3`` (60, 3x3), ``pool_3``;
      every convolution has "valid" padding, stride 1 and a ReLU;
    - two interpretation branches on ``pool_3``: ``fc_1``, a dense layer of
      160 units on ``flatten_1(pool_3)``, and ``conv_4`` (80, 2x2) followed
      by ``fc_2``, 160 units on ``flatten_2(conv_4)``;
    - ``penultimate``, the ReLU of ``fc_1 + fc_2`` (Keras' ``add_1`` and
      ``activation_1``), then ``output``, the dense layer of ``n_classes``
      units.

    Two deviations from the Keras model, both for torch's conventions: the
    network returns logits (the Keras ``output`` layer applies a softmax),
    and inputs are channels first, ``(n, 3, 55, 47)``, which is how the
    challenge's data files store the images (its ``eval.py`` transposes them
    to channels last for Keras and divides by 255, so inputs lie in [0, 1]).
    Keras fuses each ReLU into its convolution; here ``relu_1`` ...
    ``relu_4`` are layers of their own so that a hook on ``conv_k`` sees the
    convolution's output and one on ``relu_k`` its activation.

    Parameters
    ----------
    n_classes : int, default=1283
        Number of output classes (the challenge's models have 1283).
    in_channels : int, default=3
        Channels of the input images.
    input_size : tuple of int, default=(55, 47)
        Height and width of the input images. It fixes the widths of
        ``fc_1`` and ``fc_2``, which see flattened feature maps.

    Attributes
    ----------
    last_conv_name : str
        ``"conv_3"``, the layer that Fine-Pruning prunes: its channels feed
        both branches (``fc_1`` through ``pool_3``, ``fc_2`` through
        ``conv_4``), so a pruned channel leaves every path to the logits.
        Pass ``layer="conv_4"`` to a defense to work on the deeper branch.
    penultimate_name : str
        ``"penultimate"``, the 160-unit representation before ``output``.
    input_shape : tuple of int
        ``(in_channels, height, width)`` that :meth:`forward` accepts.
    flatten_shapes : dict of str to tuple of int
        ``(C, H, W)`` of the maps flattened into ``fc_1`` and ``fc_2``
        (``(60, 5, 4)`` and ``(80, 4, 3)`` for 55x47 inputs): what a
        converter of channels-last dense kernels needs.

    See Also
    --------
    load_keras_h5 : Read the challenge's Keras ``.h5`` files into a DeepID.
    SmallCNN : A small network for the embedded data sets.

    References
    ----------
    .. [1] Y. Sun, X. Wang and X. Tang, "Deep Learning Face Representation
       from Predicting 10,000 Classes", CVPR 2014.
    .. [2] CSAW HackML 2020, https://github.com/csaw-hackml/CSAW-HackML-2020
       (``architecture.py``).
    .. [3] K. Liu, B. Dolan-Gavitt and S. Garg, "Fine-Pruning: Defending
       Against Backdooring Attacks on Deep Neural Networks", RAID 2018.

    Examples
    --------
    >>> import torch
    >>> from backdoorlearn.models import DeepID
    >>> net = DeepID()
    >>> net(torch.zeros(2, 3, 55, 47)).shape
    torch.Size([2, 1283])
    >>> sum(p.numel() for p in net.parameters())
    601643
    >>> net.last_conv_name, net.penultimate_name
    ('conv_3', 'penultimate')
    >>> DeepID(n_classes=10, input_size=(32, 32))(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """

    def __init__(self, n_classes=1283, in_channels=3, input_size=(55, 47)):
        super().__init__()
        try:
            height, width = (int(s) for s in input_size)
        except (TypeError, ValueError):
            raise ValueError(f"DeepID needs input_size=(height, width); got {input_size!r}.") from None
        # Spatial sizes through conv_1 (4x4), pool, conv_2 (3x3), pool, conv_3 (3x3), pool_3, conv_4 (2x2).
        h3 = _conv_size(_conv_size(_conv_size(height, 4) // 2, 3) // 2, 3) // 2
        w3 = _conv_size(_conv_size(_conv_size(width, 4) // 2, 3) // 2, 3) // 2
        h4, w4 = _conv_size(h3, 2), _conv_size(w3, 2)
        if n_classes < 2 or in_channels < 1 or min(h4, w4) < 1:
            raise ValueError(
                "DeepID needs n_classes >= 2, in_channels >= 1 and inputs of at least 31x31 pixels "
                f"(the 55x47 faces of CSAW HackML by default); got n_classes={n_classes}, "
                f"in_channels={in_channels}, input_size={input_size!r}."
            )
        self.conv_1 = nn.Conv2d(in_channels, 20, kernel_size=4)
        self.relu_1 = nn.ReLU()
        self.pool_1 = nn.MaxPool2d(2)
        self.conv_2 = nn.Conv2d(20, 40, kernel_size=3)
        self.relu_2 = nn.ReLU()
        self.pool_2 = nn.MaxPool2d(2)
        self.conv_3 = nn.Conv2d(40, 60, kernel_size=3)
        self.relu_3 = nn.ReLU()
        self.pool_3 = nn.MaxPool2d(2)
        self.conv_4 = nn.Conv2d(60, 80, kernel_size=2)
        self.relu_4 = nn.ReLU()
        self.flatten_1 = nn.Flatten()
        self.flatten_2 = nn.Flatten()
        self.fc_1 = nn.Linear(60 * h3 * w3, 160)
        self.fc_2 = nn.Linear(80 * h4 * w4, 160)
        self.penultimate = nn.ReLU()
        self.output = nn.Linear(160, n_classes)
        self.last_conv_name = "conv_3"
        self.penultimate_name = "penultimate"
        self.input_shape: Tuple[int, int, int] = (int(in_channels), height, width)
        self.flatten_shapes: Dict[str, Tuple[int, int, int]] = {"fc_1": (60, h3, w3), "fc_2": (80, h4, w4)}

    def forward(self, x):
        """Compute the logits of a batch of faces.

        Parameters
        ----------
        x : torch.Tensor of shape (n, in_channels, height, width)
            Images, channels first, in [0, 1] for the challenge's models.

        Returns
        -------
        logits : torch.Tensor of shape (n, n_classes)
            One score per class (no softmax, unlike the Keras model).

        Raises
        ------
        ValueError
            If ``x`` is not a batch of ``input_shape`` images.
        """
        if x.dim() != 4 or (x.shape[1], x.shape[2], x.shape[3]) != self.input_shape:
            raise ValueError(
                f"DeepID expects inputs of shape (n, {self.input_shape[0]}, {self.input_shape[1]}, "
                f"{self.input_shape[2]}), channels first; got {list(x.shape)}."
            )
        x = self.pool_1(self.relu_1(self.conv_1(x)))
        x = self.pool_2(self.relu_2(self.conv_2(x)))
        pool_3 = self.pool_3(self.relu_3(self.conv_3(x)))
        fc_1 = self.fc_1(self.flatten_1(pool_3))
        fc_2 = self.fc_2(self.flatten_2(self.relu_4(self.conv_4(pool_3))))
        return self.output(self.penultimate(fc_1 + fc_2))

"""Small reference networks for the embedded data sets and the tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


class _AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` that returns a map already of the output size as it is.

    Pooling to the size the map has is the identity, but its CPU kernels (and
    their backward) are slow. The module is still called, so hooks on it (a
    defense's activation capture) see its output.
    """

    def forward(self, x):
        size = self.output_size
        if tuple(x.shape[-2:]) == ((size, size) if isinstance(size, int) else tuple(size)):
            return x
        return super().forward(x)


class SmallCNN(nn.Module):
    """A small convolutional classifier for 1- or 3-channel images.

    ``len(channels)`` blocks of 3x3 convolution and ReLU, with 2x2 max pooling
    between blocks, then adaptive average pooling to ``pooled_size`` squared,
    a hidden fully connected layer and the output layer (logits). It works on
    anything from 8x8 digits to 32x32 colour images.

    The layers carry plain names so defenses can point at them:
    ``conv1 ... convN`` (``last_conv_name`` is the last one, the layer
    Fine-Pruning prunes), ``relu1 ... reluN``, ``fc1``, ``penultimate`` (the
    ReLU after ``fc1``: the representation Neural Cleanse's filters watch,
    ``penultimate_name``) and ``classifier`` (the logits).

    Parameters
    ----------
    in_channels : int, default=1
        Channels of the input images.
    n_classes : int, default=10
        Number of output classes.
    channels : tuple of int, default=(16, 32)
        Output channels of each convolution block.
    hidden : int, default=64
        Width of the penultimate (hidden) layer.
    pooled_size : int, default=2
        Side of the feature map after the adaptive average pooling.

    Attributes
    ----------
    last_conv_name : str
        Name of the last convolution.
    penultimate_name : str
        Name of the penultimate layer (``"penultimate"``).

    See Also
    --------
    backdoorlearn.models.train_classifier : Train it through skorch, seeded locally.

    Examples
    --------
    >>> import torch
    >>> from backdoorlearn.models import SmallCNN
    >>> net = SmallCNN(in_channels=3, n_classes=43)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 43])
    >>> net.last_conv_name, net.penultimate_name
    ('conv2', 'penultimate')
    """

    def __init__(self, in_channels=1, n_classes=10, channels=(16, 32), hidden=64, pooled_size=2):
        super().__init__()
        if in_channels < 1 or n_classes < 2 or not channels:
            raise ValueError(
                "SmallCNN needs in_channels >= 1, n_classes >= 2 and at least one conv block; got "
                f"in_channels={in_channels}, n_classes={n_classes}, channels={channels}."
            )
        self._blocks = []
        prev = in_channels
        for i, width in enumerate(channels, start=1):
            self.add_module(f"conv{i}", nn.Conv2d(prev, width, kernel_size=3, padding=1))
            self.add_module(f"relu{i}", nn.ReLU())
            names = [f"conv{i}", f"relu{i}"]
            if i < len(channels):
                self.add_module(f"pool{i}", nn.MaxPool2d(2, ceil_mode=True))
                names.append(f"pool{i}")
            self._blocks.extend(names)
            prev = width
        self.gap = _AdaptiveAvgPool2d(pooled_size)
        self.fc1 = nn.Linear(prev * pooled_size * pooled_size, hidden)
        self.penultimate = nn.ReLU()
        self.classifier = nn.Linear(hidden, n_classes)
        self.last_conv_name = f"conv{len(channels)}"
        self.penultimate_name = "penultimate"

    def forward(self, x):
        """Compute the logits of a batch of images.

        Parameters
        ----------
        x : torch.Tensor of shape (n, in_channels, H, W)
            Images.

        Returns
        -------
        logits : torch.Tensor of shape (n, n_classes)
            One score per class.
        """
        for name in self._blocks:
            x = getattr(self, name)(x)
        x = torch.flatten(self.gap(x), 1)
        return self.classifier(self.penultimate(self.fc1(x)))

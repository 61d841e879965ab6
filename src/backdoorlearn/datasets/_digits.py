"""scikit-learn's digits as images."""

from __future__ import annotations

import numpy as np
from sklearn import datasets as _skdatasets

__all__ = ["load_digits"]


def load_digits():
    """Load scikit-learn's 1797 handwritten digits as ``(n, 1, 8, 8)`` images in [0, 1].

    The data ship with scikit-learn, so nothing is downloaded.

    Returns
    -------
    X : ndarray of shape (1797, 1, 8, 8), float32
        Pixel values divided by 16.
    y : ndarray of shape (1797,), int64
        The digit shown, 0 to 9.

    Examples
    --------
    >>> from backdoorlearn.datasets import load_digits
    >>> X, y = load_digits()
    >>> X.shape, float(X.max()), sorted(set(y.tolist())) == list(range(10))
    ((1797, 1, 8, 8), 1.0, True)
    """
    digits = _skdatasets.load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return X, digits.target.astype(np.int64)

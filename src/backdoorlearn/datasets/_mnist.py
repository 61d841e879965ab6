"""MNIST (and Fashion-MNIST) from their IDX files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ._common import _check_subset

__all__ = ["load_mnist"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path):
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


def read_idx(path):
    """Read one IDX file (MNIST's format), gzipped or not, as a numpy array."""
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: the IDX header announces shape {dims} ({expected} bytes of data) but the "
            f"file holds {len(raw) - header}."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)



def _find(directory, names, what):
    for name in names:
        for candidate in (name, name + ".gz"):
            p = Path(directory) / candidate
            if p.exists():
                return p
    raise FileNotFoundError(f"no {what} file in {directory}: looked for {', '.join(names)} (optionally .gz).")


def load_mnist(directory, subset="train"):
    """Load MNIST (or Fashion-MNIST) from its IDX files in ``directory``.

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``train-images-idx3-ubyte`` and
        ``train-labels-idx1-ubyte`` (or the ``t10k-`` test files), gzipped or
        not, as distributed.
    subset : {"train", "test"}, default="train"

    Returns
    -------
    X : ndarray of shape (n, 1, 28, 28), float32 in [0, 1]
    y : ndarray of shape (n,), int64

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from backdoorlearn.datasets import load_mnist
    >>> d = tempfile.mkdtemp()
    >>> images = np.zeros((2, 28, 28), np.uint8)
    >>> with open(os.path.join(d, "train-images-idx3-ubyte"), "wb") as f:
    ...     _ = f.write(bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in images.shape)
    ...                 + images.tobytes())
    >>> with open(os.path.join(d, "train-labels-idx1-ubyte"), "wb") as f:
    ...     _ = f.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([3, 7]))
    >>> X, y = load_mnist(d)
    >>> X.shape, y.tolist()
    ((2, 1, 28, 28), [3, 7])
    """
    _check_subset(subset)
    prefix = "train" if subset == "train" else "t10k"
    images = read_idx(_find(directory, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "image"))
    labels = read_idx(_find(directory, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "label"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in {directory} disagree: images of shape {images.shape}, labels of shape {labels.shape}."
        )
    X = (images.astype(np.float32) / 255.0)[:, None]
    return X, labels.astype(np.int64)

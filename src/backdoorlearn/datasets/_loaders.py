"""Loaders for data sets the user has on disk (nothing is downloaded).

Files from third parties are read with parsers that execute no code: IDX and
CIFAR-10 binary batches are raw bytes, and CIFAR-10's "python version"
batches are read with an unpickler that only rebuilds plain containers and
bytes (:class:`_DataOnlyUnpickler`), never arbitrary objects.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np

__all__ = ["load_mnist", "load_cifar10"]

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
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test'; got {subset!r}.")
    prefix = "train" if subset == "train" else "t10k"
    images = read_idx(_find(directory, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "image"))
    labels = read_idx(_find(directory, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "label"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"MNIST files in {directory} disagree: images of shape {images.shape}, labels of shape {labels.shape}."
        )
    X = (images.astype(np.float32) / 255.0)[:, None]
    return X, labels.astype(np.int64)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain data only: any global (class or function) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: backdoorlearn only reads plain data from pickle files."
        )


def _read_cifar_python_batch(path):
    with open(path, "rb") as f:
        batch = _DataOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path} is not a CIFAR-10 python batch (no b'data' / b'labels').")
    data = batch[b"data"]
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, np.uint8)
    data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[b"labels"], dtype=np.int64)


def _read_cifar_binary_batch(path):
    raw = Path(path).read_bytes()
    row = 1 + 3 * 32 * 32
    if len(raw) % row:
        raise ValueError(f"{path} is not a CIFAR-10 binary batch: {len(raw)} bytes is not a multiple of {row}.")
    arr = np.frombuffer(raw, np.uint8).reshape(-1, row)
    return arr[:, 1:].reshape(-1, 3, 32, 32), arr[:, 0].astype(np.int64)


def load_cifar10(directory, subset="train"):
    """Load CIFAR-10 from its batches in ``directory`` (binary or python version).

    The binary version (``data_batch_1.bin`` ... ``test_batch.bin``) is raw
    bytes. The python version (``data_batch_1`` ... ``test_batch``) is a
    pickle: it is read with an unpickler that refuses every class and
    function, so a tampered file cannot run code.

    Parameters
    ----------
    directory : str or path-like
    subset : {"train", "test"}, default="train"

    Returns
    -------
    X : ndarray of shape (n, 3, 32, 32), float32 in [0, 1]
    y : ndarray of shape (n,), int64

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from backdoorlearn.datasets import load_cifar10
    >>> d = tempfile.mkdtemp()
    >>> rows = np.zeros((2, 3073), np.uint8); rows[:, 0] = [4, 9]
    >>> _ = open(os.path.join(d, "test_batch.bin"), "wb").write(rows.tobytes())
    >>> X, y = load_cifar10(d, subset="test")
    >>> X.shape, y.tolist()
    ((2, 3, 32, 32), [4, 9])
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test'; got {subset!r}.")
    names = [f"data_batch_{i}" for i in range(1, 6)] if subset == "train" else ["test_batch"]
    parts = []
    for name in names:
        binary = Path(directory) / f"{name}.bin"
        python = Path(directory) / name
        if binary.exists():
            parts.append(_read_cifar_binary_batch(binary))
        elif python.exists():
            parts.append(_read_cifar_python_batch(python))
    if not parts:
        raise FileNotFoundError(
            f"no CIFAR-10 {subset} batch in {os.fspath(directory)}: looked for {names[0]}(.bin) ..."
        )
    X = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    return X, y

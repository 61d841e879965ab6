"""CIFAR-10 from its binary or python-version batches."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from ._common import _check_subset

__all__ = ["load_cifar10"]


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
    _check_subset(subset)
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

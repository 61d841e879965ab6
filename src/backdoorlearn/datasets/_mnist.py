"""MNIST (and Fashion-MNIST) from their IDX files.

IDX is raw bytes after a header that declares the type and shape; the header is read
first, its size (computed with Python integers, so no dimension can overflow) checked
against the file length and the memory limit, and only then are the data read, gzipped
files included: they are inflated as a stream, in bounded steps, never whole.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from .._files import DEFAULT_MAX_BYTES, MemoryBudget, open_regular, read_exact
from ._common import _check_subset

__all__ = ["load_mnist"]

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}


def read_idx(path, *, budget, what, ndim, extra_bytes_per_item=0):
    """Read one IDX file of unsigned bytes (MNIST's type), gzipped or not, as a uint8 array.

    ``budget`` (a :class:`~backdoorlearn._files.MemoryBudget`) is charged with the data
    and ``extra_bytes_per_item`` more per value (what the caller will convert them to)
    before anything past the header is read.
    """
    f, size = open_regular(path, what=f"the {what} file")
    with f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gzipped else f
        magic = read_exact(stream, 4, path=path, what="the IDX header")
        if magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES:
            raise ValueError(f"{path} is not an IDX file (bad magic number {bytes(magic[:4])!r}).")
        if magic[2] != 0x08:
            raise ValueError(
                f"{path}: MNIST's {what} files hold unsigned bytes (IDX type 0x08); this one holds "
                f"{_IDX_NAMES[magic[2]]} (type {magic[2]:#04x})."
            )
        if magic[3] != ndim:
            raise ValueError(f"{path}: an MNIST {what} file has {ndim} dimension(s); this one declares {magic[3]}.")
        header = read_exact(stream, 4 * ndim, path=path, what="the IDX header")
        dims = tuple(int.from_bytes(header[4 * i: 4 * i + 4], "big") for i in range(ndim))
        count = math.prod(dims)
        if not gzipped and size - 4 - 4 * ndim != count:
            raise ValueError(
                f"{path}: the IDX header announces shape {dims} ({count} bytes of data) but the file holds "
                f"{size - 4 - 4 * ndim}."
            )
        budget.charge(count * (1 + extra_bytes_per_item), f"{path}: the IDX header announces shape {dims}, which would")
        data = np.empty(count, np.uint8)
        read_exact(stream, count, path=path, what=f"the data of the shape {dims} its IDX header announces", out=data)
        if gzipped and _has_more(stream, path=path):
            raise ValueError(f"{path}: the IDX header announces shape {dims} ({count} bytes) but the file holds more.")
    return data.reshape(dims)


def _has_more(stream, *, path):
    try:
        return bool(stream.read(1))
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is corrupt: {exc}.") from None


def _find(directory, names, what):
    for name in names:
        for candidate in (name, name + ".gz"):
            p = Path(directory) / candidate
            if p.exists():
                return p
    raise FileNotFoundError(f"no {what} file in {directory}: looked for {', '.join(names)} (optionally .gz).")


def load_mnist(directory, subset="train", *, max_bytes=DEFAULT_MAX_BYTES):
    """Load MNIST (or Fashion-MNIST) from its IDX files in ``directory``.

    Parameters
    ----------
    directory : str or path-like
        Folder holding ``train-images-idx3-ubyte`` and
        ``train-labels-idx1-ubyte`` (or the ``t10k-`` test files), gzipped or
        not, as distributed.
    subset : {"train", "test"}, default="train"
        Which part of the data set to read.
    max_bytes : int, default=2147483648 (2 GiB)
        The most memory, in bytes, the loader may use for the arrays it reads
        and returns. The sizes the IDX headers declare are checked against it
        before any data are read (MNIST's training set needs about 240 MB).

    Returns
    -------
    X : ndarray of shape (n, 1, H, W), float32 in [0, 1]
        The images, ``(n, 1, 28, 28)`` for MNIST and Fashion-MNIST, ``n >= 1``.
    y : ndarray of shape (n,), int64
        The labels, 0 to 255 (0 to 9 for MNIST and Fashion-MNIST).

    Raises
    ------
    FileNotFoundError
        If an image or label file is missing.
    ValueError
        If ``subset`` or ``max_bytes`` is invalid, a file is not a regular file,
        not IDX, not of unsigned bytes, truncated or corrupt (its path is named),
        declares more than ``max_bytes``, or the two files disagree.

    Notes
    -----
    IDX files are raw bytes after a header; nothing in them is executed. A
    gzipped file is inflated as a stream: the header is checked first, so a
    small file that declares gigabytes is refused before it is inflated.

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
    budget = MemoryBudget(max_bytes, caller="load_mnist")
    prefix = "train" if subset == "train" else "t10k"
    image_file = _find(directory, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], "image")
    label_file = _find(directory, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], "label")
    labels = read_idx(label_file, budget=budget, what="label", ndim=1, extra_bytes_per_item=8)
    images = read_idx(image_file, budget=budget, what="image", ndim=3, extra_bytes_per_item=4)
    if len(images) != len(labels) or min(images.shape) == 0:
        raise ValueError(
            f"MNIST files in {os.fspath(directory)} disagree or are empty: images of shape {images.shape} in "
            f"{image_file.name}, labels of shape {labels.shape} in {label_file.name} (expected n >= 1 images of "
            "H x W pixels and n labels)."
        )
    X = images.reshape(len(images), 1, *images.shape[1:]).astype(np.float32)
    X /= np.float32(255)
    return X, labels.astype(np.int64)

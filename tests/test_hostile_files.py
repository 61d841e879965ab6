"""Every loader against files written by an attacker or broken on the way (issue 14).

Each test writes its hostile file itself and goes through the public API only. A file case
must end with a clear error (naming the file and what was expected) within its timeout:
the thread method ends the run even if a case hangs inside C code.
"""

import copyreg
import gzip
import os
import pickle
import re
import struct
import threading
import zipfile
import zlib

import numpy as np
import pytest

from backdoorlearn import Trigger
from backdoorlearn.datasets import load_cifar10, load_gtsrb, load_hackml_h5, load_mnist

pytestmark = pytest.mark.timeout(60, method="thread")

TWO_GIB = 2 * 2**30


def _named(path):
    return re.escape(str(path))


# --- MNIST (IDX) -------------------------------------------------------------------------------------------------


def _idx_header(dims, code=0x08):
    return bytes([0, 0, code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)


def _mnist(d, images=b"", labels=None, gz=False, n=2):
    labels = _idx_header((n,)) + bytes(n) if labels is None else labels
    (d / "train-labels-idx1-ubyte").write_bytes(labels)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    (d / name).write_bytes(images)
    return d / name


def test_mnist_gzip_bomb_is_refused_from_its_header_before_inflating(tmp_path):
    # 3 million images declared (2.3 GB of bytes, 9 GB as float32); the stream is cut after the
    # header, so a loader that inflates before checking fails on the gzip, not on the size
    declared = (3_000_000, 28, 28)
    noise = np.random.default_rng(0).bytes(2**16)  # incompressible: the cut falls inside the data
    path = _mnist(tmp_path, gzip.compress(_idx_header(declared) + noise)[:4096], gz=True, n=3_000_000)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header((3_000_000,)) + bytes(3_000_000))
    with pytest.raises(ValueError, match=f"{_named(path)}.*announces shape \\(3000000, 28, 28\\).*max_bytes"):
        load_mnist(tmp_path)


def test_mnist_complete_gzip_bomb_is_bounded_by_max_bytes(tmp_path):
    payload = _idx_header((2000, 28, 28)) + bytes(2000 * 784)  # 1.5 MB inflated from a 2 KB file
    path = _mnist(tmp_path, gzip.compress(payload), gz=True, n=2000)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header((2000,)) + bytes(2000))
    with pytest.raises(ValueError, match=f"{_named(path)}.*max_bytes=100000"):
        load_mnist(tmp_path, max_bytes=100_000)
    X, y = load_mnist(tmp_path, max_bytes=10 * 2**20)
    assert X.shape == (2000, 1, 28, 28) and y.shape == (2000,)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_dims_that_overflow_int64_are_refused(tmp_path, gz):
    dims = (2**21, 2**21, 2**22)  # 2**64 bytes: 0 in int64 arithmetic, and the file holds 0 bytes of data
    raw = _idx_header(dims)
    path = _mnist(tmp_path, gzip.compress(raw) if gz else raw, gz=gz)
    with pytest.raises(ValueError, match=f"{_named(path)}.*announces shape \\(2097152, 2097152, 4194304\\)"):
        load_mnist(tmp_path)


def test_mnist_fifo_is_refused_not_waited_on(tmp_path):
    _mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").unlink()
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
        load_mnist(tmp_path)


def test_mnist_truncated_and_corrupt_gzip(tmp_path):
    payload = gzip.compress(_idx_header((2, 28, 28)) + bytes(range(256)) * 7)  # 1792 bytes, 1568 expected
    path = _mnist(tmp_path, payload[:-30], gz=True)
    with pytest.raises(ValueError, match=f"{_named(path)} is (truncated|corrupt)"):
        load_mnist(tmp_path)
    good = gzip.compress(_idx_header((2, 28, 28)) + bytes(1568))
    bad_crc = good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:]
    path = _mnist(tmp_path, bad_crc, gz=True)
    with pytest.raises(ValueError, match=f"{_named(path)} is corrupt"):
        load_mnist(tmp_path)
    path = _mnist(tmp_path, _idx_header((2, 28, 28)) + bytes(1567))
    with pytest.raises(ValueError, match=f"{_named(path)}: the IDX header announces shape \\(2, 28, 28\\)"):
        load_mnist(tmp_path)


def test_mnist_contract_pixels_and_labels(tmp_path):
    images = np.full((2, 28, 28), np.nan, ">f4")
    path = _mnist(tmp_path, _idx_header(images.shape, 0x0D) + images.tobytes())
    with pytest.raises(ValueError, match=f"{_named(path)}: MNIST's image files hold unsigned bytes.*float32"):
        load_mnist(tmp_path)
    images = np.zeros((2, 28, 28), np.uint8)
    _mnist(tmp_path, _idx_header(images.shape) + images.tobytes(),
           labels=_idx_header((2,), 0x0D) + np.array([1.5, 2.7], ">f4").tobytes())
    with pytest.raises(ValueError, match="label files hold unsigned bytes"):
        load_mnist(tmp_path)
    _mnist(tmp_path, _idx_header((0, 28, 28)), n=0)
    with pytest.raises(ValueError, match="disagree or are empty"):
        load_mnist(tmp_path)

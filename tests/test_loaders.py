import gzip
import pickle

import numpy as np
import pytest

from backdoorlearn.datasets import load_cifar10, load_mnist


def _idx(array, dtype_code=0x08):
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.tobytes()


@pytest.fixture
def mnist_dir(tmp_path, rng):
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    return tmp_path, images, labels


def test_load_mnist_reads_gzipped_and_plain(mnist_dir):
    d, images, labels = mnist_dir
    X, y = load_mnist(d)
    assert X.shape == (5, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X[:, 0] * 255, images)
    assert y.tolist() == labels.tolist()


def test_load_mnist_errors(mnist_dir, tmp_path):
    d, _, _ = mnist_dir
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        load_mnist(d, subset="test")
    with pytest.raises(ValueError, match="subset"):
        load_mnist(d, subset="valid")
    (d / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + (9).to_bytes(4, "big") * 3 + b"\x00")
    (d / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(9, np.uint8)))
    with pytest.raises(ValueError, match="announces shape"):
        load_mnist(d, subset="test")
    (d / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(d, subset="test")


def test_load_cifar10_binary_and_python(tmp_path, rng):
    rows = rng.integers(0, 256, (4, 3073), dtype=np.uint8)
    rows[:, 0] = [1, 2, 3, 4]
    (tmp_path / "data_batch_1.bin").write_bytes(rows.tobytes())
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": data.tobytes(), b"labels": [7, 8, 9]}, f)
    X, y = load_cifar10(tmp_path)
    assert X.shape == (7, 3, 32, 32) and y.tolist() == [1, 2, 3, 4, 7, 8, 9]
    np.testing.assert_allclose(X[4].reshape(-1) * 255, data[0], atol=1e-3)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar10_python_batch_never_runs_code(tmp_path, capsys):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load builtins.print"):
        load_cifar10(tmp_path, subset="test")
    assert "pwned" not in capsys.readouterr().out


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 train batch"):
        load_cifar10(tmp_path)

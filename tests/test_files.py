"""The shared checks for untrusted files (backdoorlearn._files), on their own."""

import gzip
import io
import os
import tracemalloc

import numpy as np
import pytest

from backdoorlearn._files import MemoryBudget, check_max_bytes, contained_path, h5_dataset, open_regular, read_exact

pytestmark = pytest.mark.timeout(60, method="thread")


def test_memory_budget_counts_and_refuses():
    budget = MemoryBudget(100, caller="load_x")
    budget.charge(60, "the images")
    assert budget.left == 40
    with pytest.raises(ValueError, match="the labels need 41 bytes, but load_x may use 40 bytes more \\(max_bytes=100\\)"):
        budget.charge(41, "the labels")
    budget.charge(40, "exactly the rest")
    with pytest.raises(ValueError, match="need 1267650600228229401496703205376 bytes"):
        MemoryBudget(10**6, caller="load_x").charge(2**100, "a huge header")  # Python ints: no overflow
    for bad in (0, -5, 1.5, True, None):
        with pytest.raises(ValueError, match="max_bytes in load_x must be a positive integer"):
            check_max_bytes(bad, caller="load_x")


def test_open_regular_refuses_special_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_regular(tmp_path / "missing")
    with pytest.raises(ValueError, match="is a folder, not a regular file"):
        open_regular(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ValueError, match="is a FIFO"):
        open_regular(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="is a character device"):
        open_regular(tmp_path / "link")
    (tmp_path / "big").write_bytes(bytes(11))
    with pytest.raises(ValueError, match="holds 11 bytes, more than the 10 bytes allowed"):
        open_regular(tmp_path / "big", max_size=10)


def test_read_exact_inflates_no_more_than_asked():
    stream = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(bytes(64 * 2**20))))
    tracemalloc.start()
    try:
        assert len(read_exact(stream, 10, path="x.gz", what="a header")) == 10
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # the 64 MiB behind the header were never inflated
    with pytest.raises(ValueError, match="x.gz is corrupt"):
        read_exact(gzip.GzipFile(fileobj=io.BytesIO(b"\x1f\x8b\x08\x00garbage")), 10, path="x.gz", what="a header")


def test_contained_path(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a").write_text("a")
    assert contained_path(tmp_path / "in", "a", source="f.csv") == tmp_path / "in" / "a"
    assert contained_path(tmp_path / "in", "sub/b", source="f.csv") == tmp_path / "in" / "sub" / "b"
    for name in ("../a", "/etc/passwd", "C:\\x", "sub/../../a", "a\0b", "..\\a"):
        with pytest.raises(ValueError, match="f.csv lists .*not a file name inside"):
            contained_path(tmp_path / "in", name, source="f.csv")
    (tmp_path / "in" / "out").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="leads outside"):
        contained_path(tmp_path / "in", "out/a", source="f.csv")


def test_h5_dataset_walks_hard_links_only(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("model_weights/dense/dense/kernel:0", data=np.ones((3, 2), np.float32))
        f["model_weights/alias"] = h5py.SoftLink("/model_weights/dense")
        f["model_weights/dense/bias:0"] = h5py.ExternalLink("other.h5", "/bias")
        f.create_dataset("names", data=np.array([b"a"], dtype=h5py.string_dtype()))
    with h5py.File(path, "r") as f:
        kernel = h5_dataset(f, "model_weights/dense/dense/kernel:0", path=str(path), max_bytes=1000)
        assert kernel.shape == (3, 2)
        with pytest.raises(ValueError, match="'model_weights/alias' is an HDF5 SoftLink"):
            h5_dataset(f, "model_weights/alias/dense/kernel:0", path=str(path), max_bytes=1000)
        with pytest.raises(ValueError, match="'model_weights/dense/bias:0' is an HDF5 ExternalLink to other.h5"):
            h5_dataset(f, "model_weights/dense/bias:0", path=str(path), max_bytes=1000)
        with pytest.raises(ValueError, match="has no 'model_weights/nothing'"):
            h5_dataset(f, "model_weights/nothing/kernel", path=str(path), max_bytes=1000)
        with pytest.raises(ValueError, match="'model_weights' is a Group, expected a dataset"):
            h5_dataset(f, "model_weights", path=str(path), max_bytes=1000)
        with pytest.raises(ValueError, match="declares shape \\(3, 2\\) of float32, 24 bytes, more than max_bytes=23"):
            h5_dataset(f, "model_weights/dense/dense/kernel:0", path=str(path), max_bytes=23)
        with pytest.raises(ValueError, match="'names' must hold numbers"):
            h5_dataset(f, "names", path=str(path), max_bytes=1000)


def test_h5_dataset_accepts_the_filters_it_can_bound(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "x.h5"
    data = np.arange(4000, dtype=np.float32).reshape(40, 100)
    with h5py.File(path, "w") as f:
        f.create_dataset("gzip", data=data, chunks=(7, 30), compression="gzip", shuffle=True, fletcher32=True)
        f.create_dataset("plain", data=data)
    with h5py.File(path, "r") as f:
        for name in ("gzip", "plain"):
            np.testing.assert_array_equal(h5_dataset(f, name, path=str(path), max_bytes=10**6)[()], data)

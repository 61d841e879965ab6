import gzip
import pickle
import re
import struct
import sys

import numpy as np
import pytest

from backdoorlearn.datasets import load_cifar10, load_gtsrb, load_hackml_h5, load_mnist

# every case reads a file; none may hang (the thread method ends even a hang inside C code)
pytestmark = pytest.mark.timeout(60, method="thread")


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
    for i in (1, 3, 4, 5):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(rows.tobytes())
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    with open(tmp_path / "data_batch_2", "wb") as f:
        pickle.dump({b"data": data.tobytes(), b"labels": [7, 8, 9]}, f)
    X, y = load_cifar10(tmp_path)
    assert X.shape == (19, 3, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    assert y.tolist() == [1, 2, 3, 4, 7, 8, 9] + [1, 2, 3, 4] * 3
    np.testing.assert_allclose(X[4].reshape(-1) * 255, data[0], atol=1e-3)
    np.testing.assert_allclose(X[:4].reshape(4, -1) * 255, rows[:, 1:], atol=1e-3)


def _py2_batch(data, labels):
    """A python-version batch byte for byte as CIFAR-10 ships it (cPickle, protocol 2, Python 2 str)."""
    def s(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    n = len(data)
    out = b"\x80\x02}q\x01(" + s(b"data") + b"q\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
    out += b"K\x00\x85" + s(b"b") + b"\x87Rq\x05(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
    out += b"cnumpy\ndtype\nq\x06" + s(b"u1") + b"K\x00K\x01\x87Rq\x07(K\x03" + s(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + s(data.tobytes()) + b"tb"
    out += s(b"labels") + b"q\x08]q\t(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += s(b"batch_label") + b"q\n" + s(b"testing batch 1 of 1") + b"q\x0b"
    out += s(b"filenames") + b"q\x0c]q\r(" + b"".join(s(b"img_%d.png" % i) for i in range(n)) + b"eu."
    return out


def test_load_cifar10_python_batches_with_numpy_arrays(tmp_path, rng):
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    raw = _py2_batch(data, [3, 1, 4])
    assert pickle.loads(raw, encoding="bytes")[b"data"].shape == (3, 3072)  # the fixture is a real pickle
    (tmp_path / "test_batch").write_bytes(raw)
    X, y = load_cifar10(tmp_path, subset="test")
    assert y.tolist() == [3, 1, 4]
    np.testing.assert_allclose(X.reshape(3, -1) * 255, data, atol=1e-3)
    # the same batch pickled by this numpy, at every protocol that pickles arrays in-band
    for protocol in (3, 4, 5):
        with open(tmp_path / "test_batch", "wb") as f:
            pickle.dump({b"data": data, b"labels": [3, 1, 4], b"batch_label": "x"}, f, protocol=protocol)
        X2, y2 = load_cifar10(tmp_path, subset="test")
        np.testing.assert_array_equal(X2, X)
        assert y2.tolist() == [3, 1, 4]


def test_loaders_validate_max_bytes(tmp_path):
    for load in (load_mnist, load_cifar10, load_gtsrb):
        for bad in (0, -1, 2.5, True, "2G"):
            with pytest.raises(ValueError, match=f"max_bytes in {load.__name__} must be a positive integer"):
                load(tmp_path, max_bytes=bad)


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


# --- GTSRB -----------------------------------------------------------------------------------------------------

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
_GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def _ppm(rgb, plain=False):
    h, w, _ = rgb.shape
    if plain:
        return f"P3\n# plain\n{w} {h}\n255\n".encode() + " ".join(map(str, rgb.reshape(-1))).encode() + b"\n"
    return f"P6\n# binary\n{w} {h}\n255\n".encode() + rgb.astype(np.uint8).tobytes()


def _sign(h, w, roi, colour):
    """A sign of `colour` filling the ROI (exclusive ends) inside a blue border."""
    x1, y1, x2, y2 = roi
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BLUE
    image[y1:y2, x1:x2] = colour
    return image


def _write_gtsrb(folder, csv_name, specs):
    lines = [_GT_HEADER]
    for name, h, w, roi, colour, label, plain in specs:
        (folder / name).write_bytes(_ppm(_sign(h, w, roi, colour), plain))
        lines.append(f"{name};{w};{h};{';'.join(map(str, roi))};{label}\n")
    (folder / csv_name).write_text("".join(lines))


@pytest.fixture
def gtsrb_root(tmp_path):
    """Two classes (red = 0, green = 1), images of different sizes, P6 and P3, as GTSRB lays them out."""
    train = tmp_path / "GTSRB" / "Final_Training" / "Images"
    (train / "00000").mkdir(parents=True)
    (train / "00001").mkdir()
    _write_gtsrb(train / "00000", "GT-00000.csv", [("00000_00000.ppm", 12, 10, (2, 3, 8, 9), RED, 0, False),
                                                   ("00000_00001.ppm", 16, 16, (5, 5, 11, 11), RED, 0, True)])
    _write_gtsrb(train / "00001", "GT-00001.csv", [("00000_00000.ppm", 9, 14, (4, 2, 10, 7), GREEN, 1, False)])
    test = tmp_path / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    _write_gtsrb(test, "GT-final_test.csv", [("00000.ppm", 11, 10, (2, 2, 8, 9), GREEN, 1, False),
                                             ("00001.ppm", 13, 12, (3, 3, 9, 10), RED, 0, False)])
    return tmp_path


def _uniform(colour, n):
    return np.broadcast_to(np.array(colour, np.float32)[:, None, None] / 255, (3, n, n))


def test_load_gtsrb_train_crops_to_the_roi_and_resizes(gtsrb_root):
    X, y = load_gtsrb(gtsrb_root)
    assert X.shape == (3, 3, 32, 32) and X.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 1]
    assert X.min() >= 0 and X.max() <= 1
    # the ROI is the sign alone: after cropping, each image is one uniform colour, the blue border gone
    for image, colour in zip(X, [RED, RED, GREEN]):
        np.testing.assert_allclose(image, _uniform(colour, 32), atol=1e-6)

    X, y = load_gtsrb(gtsrb_root, image_size=16, crop_roi=False)
    assert X.shape == (3, 3, 16, 16) and y.tolist() == [0, 0, 1]
    np.testing.assert_allclose(X[:, :, 0, 0], np.tile(np.array(BLUE) / 255, (3, 1)), atol=1e-6)
    # the 16x16 plain (P3) image at its own size comes back pixel for pixel
    expected = _sign(16, 16, (5, 5, 11, 11), RED).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(X[1], expected, atol=1e-6)
    # shrinking averages (antialias) instead of sampling the centre: red sign and blue border mix
    X = load_gtsrb(gtsrb_root, image_size=1, crop_roi=False)[0]
    assert X.shape == (3, 3, 1, 1) and 0.1 < X[1, 0, 0, 0] < 0.9 and 0.1 < X[1, 2, 0, 0] < 0.9


def test_load_gtsrb_finds_the_images_folder(gtsrb_root):
    X, y = load_gtsrb(gtsrb_root, image_size=8)
    for directory in (gtsrb_root / "GTSRB", gtsrb_root / "GTSRB" / "Final_Training",
                      gtsrb_root / "GTSRB" / "Final_Training" / "Images"):
        X2, y2 = load_gtsrb(directory, image_size=8)
        np.testing.assert_array_equal(X2, X)
        np.testing.assert_array_equal(y2, y)


def test_load_gtsrb_test_subset(gtsrb_root):
    images = gtsrb_root / "GTSRB" / "Final_Test" / "Images"
    X, y = load_gtsrb(gtsrb_root, subset="test", image_size=8)
    assert X.shape == (2, 3, 8, 8) and X.dtype == np.float32 and y.tolist() == [1, 0]
    np.testing.assert_allclose(X[0], _uniform(GREEN, 8), atol=1e-6)
    np.testing.assert_allclose(X[1], _uniform(RED, 8), atol=1e-6)
    np.testing.assert_array_equal(load_gtsrb(images, subset="test", image_size=8)[0], X)
    # the labelled CSV ships apart from the images: found in `directory` or any folder on the way
    (images / "GT-final_test.csv").rename(gtsrb_root / "GT-final_test.csv")
    X2, y2 = load_gtsrb(gtsrb_root, subset="test", image_size=8)
    np.testing.assert_array_equal(X2, X)
    assert y2.tolist() == [1, 0]
    with pytest.raises(FileNotFoundError, match="GT-final_test.csv"):
        load_gtsrb(images, subset="test")
    # the unlabelled CSV distributed with the test images is not enough, and the error says why
    (gtsrb_root / "GT-final_test.csv").rename(images / "GT-final_test.test.csv")
    with pytest.raises(FileNotFoundError, match="has no ClassId column"):
        load_gtsrb(gtsrb_root, subset="test")


def test_load_gtsrb_argument_errors(gtsrb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="directory .*does not exist"):
        load_gtsrb(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="subset must be 'train' or 'test'; got 'valid'"):
        load_gtsrb(gtsrb_root, subset="valid")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="image_size must be an integer >= 1"):
            load_gtsrb(gtsrb_root, image_size=bad)
    with pytest.raises(ValueError, match="crop_roi"):
        load_gtsrb(gtsrb_root, crop_roi="yes")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="class folders"):
        load_gtsrb(empty)
    with pytest.raises(FileNotFoundError, match=r"\.ppm files"):
        load_gtsrb(empty, subset="test")


def test_load_gtsrb_file_errors(gtsrb_root):
    folder = gtsrb_root / "GTSRB" / "Final_Training" / "Images" / "00001"
    ppm, gt = folder / "00000_00000.ppm", folder / "GT-00001.csv"
    image, annotations = ppm.read_bytes(), gt.read_text()

    gt.unlink()
    with pytest.raises(FileNotFoundError, match="GT-00001.csv"):
        load_gtsrb(gtsrb_root)
    gt.write_text(annotations.replace("Roi.X1", "RoiX1"))
    with pytest.raises(ValueError, match="lacks the column.*Roi.X1"):
        load_gtsrb(gtsrb_root)
    assert load_gtsrb(gtsrb_root, crop_roi=False)[0].shape == (3, 3, 32, 32)  # no ROI needed without cropping
    gt.write_text(annotations.replace(";1\n", ";one\n"))
    with pytest.raises(ValueError, match="line 2: ClassId must be an integer; got 'one'"):
        load_gtsrb(gtsrb_root)
    gt.write_text(annotations.replace("00000_00000.ppm;14;9", "00000_00000.ppm;15;9"))
    with pytest.raises(ValueError, match="is 14x9 pixels but .* says 15x9"):
        load_gtsrb(gtsrb_root)
    gt.write_text(annotations.replace(";4;2;10;7;", ";4;2;15;7;"))
    with pytest.raises(ValueError, match="does not lie inside its 14x9 image"):
        load_gtsrb(gtsrb_root)
    gt.write_text(annotations)

    named = re.escape(str(ppm))
    for content, message in [(image[:-5], "truncated PPM"), (b"GIF89a" + image, "not a PPM image"),
                             (b"P6\n14 x 9\n255\n", "malformed PPM header"), (b"P6\n14 9 0\n", "malformed PPM header"),
                             (b"P3\n1 1\n255\n1 2 x\n", "malformed PPM"), (b"P3\n1 1\n9\n1 2 30\n", "exceed")]:
        ppm.write_bytes(content)
        with pytest.raises(ValueError, match=f"{named}.*{message}"):
            load_gtsrb(gtsrb_root)
    ppm.unlink()
    with pytest.raises(FileNotFoundError, match="lists 00000_00000.ppm"):
        load_gtsrb(gtsrb_root)


# --- CSAW HackML .h5 ---------------------------------------------------------------------------------------------
# h5py is in the `tests` extra, so these run (and can fail) wherever the test suite is installed as documented.


def _h5(path, **datasets):
    import h5py

    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f.create_dataset(key, data=value)
    return path


def test_load_hackml_h5_layouts_and_scales(tmp_path, rng):
    images = rng.integers(0, 256, (4, 3, 55, 47)).astype(np.uint8)
    labels = np.array([0, 5, 1282, 7])
    expected = images.astype(np.float32) / 255
    files = {
        "first_float_0_255": (images.astype(np.float32), labels.astype(np.float64)),  # the challenge's layout
        "last_uint8": (images.transpose(0, 2, 3, 1), labels.astype(np.uint16)),
        "first_unit": (expected, labels[:, None]),
        "last_unit_float64": (expected.transpose(0, 2, 3, 1).astype(np.float64), labels),
    }
    for name, (data, label) in files.items():
        X, y = load_hackml_h5(_h5(tmp_path / f"{name}.h5", data=data, label=label))
        assert X.shape == (4, 3, 55, 47) and X.dtype == np.float32 and X.flags.c_contiguous, name
        np.testing.assert_allclose(X, expected, atol=1e-6, err_msg=name)
        assert y.dtype == np.int64 and y.tolist() == labels.tolist(), name


def test_load_hackml_h5_errors(tmp_path, monkeypatch):
    data, label = np.zeros((2, 3, 55, 47), np.uint8), np.array([0, 1])
    with pytest.raises(FileNotFoundError, match="path .*does not exist"):
        load_hackml_h5(tmp_path / "missing.h5")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_hackml_h5(tmp_path / "fake.h5")
    with pytest.raises(ValueError, match=r"no dataset 'label'.*found keys \['data', 'labels'\]"):
        load_hackml_h5(_h5(tmp_path / "keys.h5", data=data, labels=label))
    bad = [
        (dict(data=np.zeros((2, 55, 47)), label=label), "must hold images"),
        (dict(data=np.zeros((2, 5, 55, 47)), label=label), "neither channels first"),
        (dict(data=np.full((2, 3, 55, 47), 300, np.uint16), label=label), r"must lie in \[0, 255\]"),
        (dict(data=np.full((2, 3, 55, 47), -0.5), label=label), r"must lie in \[0, 255\]"),
        (dict(data=np.full((2, 3, 55, 47), np.nan), label=label), "NaN"),
        (dict(data=data, label=np.array([0, 1, 2])), "one label per image"),
        (dict(data=data, label=np.array([0.5, 1.0])), "whole numbers"),
    ]
    for i, (datasets, message) in enumerate(bad):
        with pytest.raises(ValueError, match=message):
            load_hackml_h5(_h5(tmp_path / f"bad{i}.h5", **datasets))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"pip install h5py \(or pip install backdoorlearn\[h5\]\)"):
        load_hackml_h5(tmp_path / "keys.h5")

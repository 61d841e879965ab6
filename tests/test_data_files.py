"""load_data_file and load_image_folder: every format ``audit`` and ``evaluate`` read, and their errors."""

import numpy as np
import pytest

from backdoorlearn.datasets import load_data_file, load_image_folder


def _pgm(path, pixels, maxval=255, plain=False):
    h, w = pixels.shape
    if plain:
        body = " ".join(str(int(v)) for v in pixels.ravel()).encode()
        path.write_bytes(b"P2\n# a comment\n%d %d\n%d\n" % (w, h, maxval) + body + b"\n")
    else:
        path.write_bytes(b"P5 %d %d %d\n" % (w, h, maxval) + pixels.astype(np.uint8).tobytes())


def _ppm(path, pixels):
    h, w, _ = pixels.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + pixels.astype(np.uint8).tobytes())


def test_npz_with_and_without_labels(tmp_path):
    X = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float64)
    np.savez(tmp_path / "a.npz", X=X, y=np.array([0.0, 1, 2, 3, 4]))
    Xl, y = load_data_file(tmp_path / "a.npz")
    assert Xl.dtype == np.float32 and Xl.shape == (5, 1, 4, 4) and y.dtype == np.int64 and y.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(Xl, X, rtol=1e-6)
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 4, 4), np.uint8))
    Xb, yb = load_data_file(tmp_path / "b.npz")
    assert Xb.shape == (3, 1, 4, 4) and yb is None


@pytest.mark.parametrize("arrays, message", [
    (dict(images=np.zeros((2, 1, 4, 4))), "must hold an array 'X'"),
    (dict(X=np.zeros((2, 4))), "must hold images of shape"),
    (dict(X=np.full((2, 1, 4, 4), np.nan)), "NaN or inf"),
    (dict(X=np.zeros((2, 1, 4, 4)), y=[0, 1, 2]), "one label per image (2)"),
    (dict(X=np.zeros((2, 1, 4, 4)), y=[0.5, 1]), "whole-number labels"),
    (dict(X=np.zeros((2, 1, 4, 4)), y=[-1, 1]), "labels >= 0"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data_file(tmp_path / "d.npz")


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    np.savez(tmp_path / "o.npz", X=np.array([object()] * 2, dtype=object))
    with pytest.raises(ValueError, match="never objects or pickles"):
        load_data_file(tmp_path / "o.npz")


def test_hackml_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "clean.h5", "w") as f:
        f.create_dataset("data", data=np.full((2, 3, 55, 47), 255, np.uint8))
        f.create_dataset("label", data=[3, 7])
    X, y = load_data_file(tmp_path / "clean.h5")
    assert X.shape == (2, 3, 55, 47) and float(X.max()) == 1.0 and y.tolist() == [3, 7]


def _idx(path, array):
    code = {np.uint8: 8}[array.dtype.type]
    path.write_bytes(bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
                     + array.tobytes())


def test_mnist_folder_prefers_the_test_files(tmp_path):
    _idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    _idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    _idx(tmp_path / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 255, np.uint8))
    _idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([7, 9], np.uint8))
    X, y = load_data_file(tmp_path)
    assert X.shape == (2, 1, 28, 28) and float(X.max()) == 1.0 and y.tolist() == [7, 9]
    # an image file alone: images without labels
    X1, y1 = load_data_file(tmp_path / "train-images-idx3-ubyte")
    assert X1.shape == (3, 1, 28, 28) and y1 is None


def test_image_folder_flat_and_by_label(tmp_path):
    rng = np.random.default_rng(0)
    flat = tmp_path / "flat"
    flat.mkdir()
    pixels = [rng.integers(0, 256, (5, 6)) for _ in range(3)]
    for i, p in enumerate(pixels):
        _pgm(flat / f"img{i}.pgm", p, plain=i == 1)
    (flat / "notes.txt").write_text("skipped")
    X, y = load_image_folder(flat)
    assert X.shape == (3, 1, 5, 6) and y is None
    np.testing.assert_allclose(X[:, 0], np.stack(pixels) / 255, rtol=1e-6)
    labelled = tmp_path / "labelled"
    for label in ("10", "2"):
        (labelled / label).mkdir(parents=True)
        _ppm(labelled / label / "a.ppm", rng.integers(0, 256, (5, 6, 3)))
    _pgm(labelled / "2" / "grey.pgm", np.full((5, 6), 255))
    X, y = load_data_file(labelled)
    assert X.shape == (3, 3, 5, 6) and y.tolist() == [2, 2, 10]  # numeric label order, files sorted by name
    np.testing.assert_allclose(X[1], 1.0)  # grey.pgm repeated over the three channels


def test_png_through_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.full((4, 5, 3), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "b.png")
    X, y = load_image_folder(tmp_path)
    assert X.shape == (2, 3, 4, 5) and X[0].min() == 1.0 and X[1].max() == 0.0 and y is None


def test_png_without_pillow_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pillow(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setattr(builtins, "__import__", no_pillow)
    with pytest.raises(ImportError, match="read through Pillow, and Pillow is not installed.*PGM/PPM"):
        load_image_folder(tmp_path)


def test_image_folder_errors(tmp_path):
    a = tmp_path / "sizes"
    a.mkdir()
    _pgm(a / "a.pgm", np.zeros((4, 4)))
    _pgm(a / "b.pgm", np.zeros((5, 4)))
    with pytest.raises(ValueError, match="not resized.*a.pgm is 4x4, b.pgm is 4x5"):
        load_image_folder(a)
    b = tmp_path / "names"
    (b / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="named by their integer label.*cats"):
        load_image_folder(b)
    c = tmp_path / "mixed"
    (c / "0").mkdir(parents=True)
    _pgm(c / "x.pgm", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="mixes images"):
        load_image_folder(c)
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        load_data_file(d)
    e = tmp_path / "bad"
    e.mkdir()
    (e / "x.pgm").write_bytes(b"P5 4 4 255\n" + bytes(3))
    with pytest.raises(ValueError, match="truncated PGM"):
        load_image_folder(e)


def test_unknown_file_and_missing_path(tmp_path):
    (tmp_path / "x.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="not a data file of a supported kind: expected a .npz archive"):
        load_data_file(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_data_file(tmp_path / "nowhere")

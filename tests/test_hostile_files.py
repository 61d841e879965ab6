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


# --- CIFAR-10 (python pickles and binary batches) --------------------------------------------------------------


def _op_bytes(value):
    return b"C" + bytes([len(value)]) + value if len(value) < 256 else b"B" + struct.pack("<I", len(value)) + value


def _batch_with(data_ops, label_ops=b"](K\x00e"):
    """A protocol-2 pickle of {b'data': <data_ops>, b'labels': <label_ops>}."""
    return b"\x80\x02}(" + _op_bytes(b"data") + data_ops + _op_bytes(b"labels") + label_ops + b"u."


def _billion_laughs(levels=9, width=10):
    """Nested lists that share one list per level: 7 KB at most, width**levels integers once expanded."""
    ops = b"](" + b"K\x00" * width + b"eq\x00"
    for level in range(1, levels + 1):
        ops += b"](" + (b"h" + bytes([level - 1])) * width + b"eq" + bytes([level])
    return ops


def test_cifar_billion_laughs_is_refused_quickly(tmp_path):
    raw = _batch_with(_billion_laughs())
    assert len(raw) < 7000
    (tmp_path / "test_batch").write_bytes(raw)
    with pytest.raises(pickle.UnpicklingError, match="memo reuse of a list \\(shared structure\\)"):
        load_cifar10(tmp_path, subset="test")


@pytest.fixture
def warm_print_extension():
    """`print` registered in copyreg's extension registry and already in its cache."""
    code = 0x7A5C
    copyreg.add_extension("builtins", "print", code)
    assert pickle.loads(b"\x80\x02\x83" + struct.pack("<H", code) + b".") is print  # warms the cache
    yield code
    copyreg.remove_extension("builtins", "print", code)


def test_cifar_ext_opcodes_never_run_code_even_with_a_warm_cache(tmp_path, capsys, warm_print_extension):
    call = b"\x83" + struct.pack("<H", warm_print_extension) + b"X" + struct.pack("<I", 5) + b"pwned\x85R"
    (tmp_path / "test_batch").write_bytes(_batch_with(call))
    with pytest.raises(pickle.UnpicklingError, match="EXT2"):
        load_cifar10(tmp_path, subset="test")
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("ops, message", [
    (b"cos\nsystem\n", "refusing to load os.system"),
    (b"\x8c\x02os\x8c\x06system\x93", "refusing to load os.system"),
    (b"(cbuiltins\nlist\nN\x85R", "refusing to load builtins.list"),
    (b"(K\x00i__main__\nX\n", "opcode INST"),
    (b"N\x85N\x81", "opcode NEWOBJ"),
    (b"X\x03\x00\x00\x00abcQ", "opcode BINPERSID"),
    (b"]q\x002h\x00", "opcode DUP"),
    (b"\x8b\x00\x00\x01\x00", "opcode LONG4"),
])
def test_cifar_pickle_opcodes_beyond_plain_data_are_refused(tmp_path, ops, message):
    (tmp_path / "test_batch").write_bytes(_batch_with(ops))
    with pytest.raises(pickle.UnpicklingError, match=message):
        load_cifar10(tmp_path, subset="test")


def test_cifar_truncated_and_malformed_python_batches(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    good = pickle.dumps({b"data": data.tobytes(), b"labels": [1, 2]}, protocol=4)
    path = tmp_path / "test_batch"
    for raw, message in [(good[:-40], "truncated"), (good[:-1], "truncated"), (b"", "truncated"),
                         (b"\x80\x02K\x01K\x02.", "malformed pickle: STOP"),
                         (pickle.dumps([1, 2]), "not a CIFAR-10 python batch"),
                         (_batch_with(_op_bytes(bytes(3000))), "b'data' must hold uint8 images")]:
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=f"{_named(path)}.*{message}"):
            load_cifar10(tmp_path, subset="test")


def test_cifar_python_batch_is_bounded_by_max_bytes(tmp_path):
    data = np.zeros((20, 3072), np.uint8)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": data.tobytes(), b"labels": list(range(10)) * 2}, f)
    with pytest.raises(ValueError, match="max_bytes=50000"):
        load_cifar10(tmp_path, subset="test", max_bytes=50_000)
    assert load_cifar10(tmp_path, subset="test", max_bytes=2**20)[0].shape == (20, 3, 32, 32)


def test_cifar_contract_labels_and_batches(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    path = tmp_path / "test_batch"
    for labels, message in [([0, 1, 2, 3, 4], "a list of 5"), ([99, 1], "labels lie in 0-9; got \\[99\\]"),
                            ([-1, 1], "labels lie in 0-9; got \\[-1\\]"), ([1.0, 2.0], "list of 2 integers"),
                            ([True, False], "list of 2 integers")]:
        with open(path, "wb") as f:
            pickle.dump({b"data": data.tobytes(), b"labels": labels}, f)
        with pytest.raises(ValueError, match=f"{_named(path)}.*{message}"):
            load_cifar10(tmp_path, subset="test")
    path.unlink()
    rows = np.zeros((2, 3073), np.uint8)
    rows[:, 0] = [3, 99]
    (tmp_path / "test_batch.bin").write_bytes(rows.tobytes())
    with pytest.raises(ValueError, match="labels lie in 0-9; got \\[99\\]"):
        load_cifar10(tmp_path, subset="test")
    rows[:, 0] = [3, 4]
    (tmp_path / "data_batch_1.bin").write_bytes(rows.tobytes())
    with pytest.raises(FileNotFoundError, match="data_batch_2, data_batch_3, data_batch_4, data_batch_5"):
        load_cifar10(tmp_path)


def test_cifar_fifo_batch_is_refused(tmp_path):
    os.mkfifo(tmp_path / "test_batch.bin")
    with pytest.raises(ValueError, match="is a FIFO, not a regular file"):
        load_cifar10(tmp_path, subset="test")


# --- GTSRB (CSV names and PPM images) ----------------------------------------------------------------------------

_GT_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
_PPM = b"P6\n2 2\n255\n" + bytes([200, 10, 10]) * 4


def _gtsrb(root, filename="a.ppm", class_id=0, folder="00000"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    if filename == "a.ppm":
        (root / folder / "a.ppm").write_bytes(_PPM)
    (root / folder / f"GT-{folder}.csv").write_text(_GT_HEADER + f"{filename};2;2;0;0;2;2;{class_id}\n")
    return root / folder / f"GT-{folder}.csv"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.ppm"  # a valid image outside the data set, which must never be read
    path.write_bytes(_PPM)
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "windows"])
def test_gtsrb_filename_that_escapes_the_folder_is_refused(tmp_path, secret, how):
    root = tmp_path / "root"
    filename = {"dotdot": "../../secret.ppm", "absolute": str(secret), "windows": "..\\..\\secret.ppm"}[how]
    csv_path = _gtsrb(root, filename)
    with pytest.raises(ValueError, match=f"{_named(csv_path)}, line 2, lists .*not a file name inside"):
        load_gtsrb(root)


def test_gtsrb_symlinks_leading_outside_are_refused(tmp_path, secret):
    root = tmp_path / "root"
    csv_path = _gtsrb(root, "link.ppm")
    (root / "00000" / "link.ppm").symlink_to(secret)
    with pytest.raises(ValueError, match=f"{_named(csv_path)}, line 2, lists 'link.ppm', which leads outside"):
        load_gtsrb(root)
    # a symlink that stays inside the folder is fine
    (root / "00000" / "a.ppm").write_bytes(_PPM)
    (root / "00000" / "link.ppm").unlink()
    (root / "00000" / "link.ppm").symlink_to(root / "00000" / "a.ppm")
    assert load_gtsrb(root, image_size=2)[1].tolist() == [0]

    # a class folder, or an annotation file, that is a link to somewhere else
    elsewhere = tmp_path / "elsewhere"
    _gtsrb(elsewhere, folder="00001", class_id=1)
    (root / "00001").symlink_to(elsewhere / "00001")
    with pytest.raises(ValueError, match="lists '00001', which leads outside"):
        load_gtsrb(root)
    (root / "00001").unlink()
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "00000" / "GT-00000.csv").unlink()
    (root / "00000" / "GT-00000.csv").symlink_to(passwd)
    with pytest.raises(ValueError, match="lists '00000/GT-00000.csv', which leads outside") as info:
        load_gtsrb(root)
    assert "root:x" not in str(info.value)


def test_gtsrb_test_subset_names_are_contained_too(tmp_path, secret):
    images = tmp_path / "root" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    (images / "00000.ppm").write_bytes(_PPM)
    (images / "GT-final_test.csv").write_text(_GT_HEADER + "../../../secret.ppm;2;2;0;0;2;2;0\n")
    with pytest.raises(ValueError, match="not a file name inside"):
        load_gtsrb(tmp_path / "root", subset="test")


def test_gtsrb_contract_class_ids(tmp_path):
    root = tmp_path / "root"
    _gtsrb(root, class_id=-5)
    with pytest.raises(ValueError, match="line 2: ClassId must be 0, the number of its class folder; got -5"):
        load_gtsrb(root)
    _gtsrb(root, class_id=3)
    with pytest.raises(ValueError, match="ClassId must be 0, the number of its class folder; got 3"):
        load_gtsrb(root)


def test_gtsrb_output_size_is_checked_before_any_image_is_read(tmp_path):
    root = tmp_path / "root"
    _gtsrb(root, "missing.ppm")
    with pytest.raises(ValueError, match="1 images of 3x1000x1000 float32 need .*max_bytes=1000000"):
        load_gtsrb(root, image_size=1000, max_bytes=10**6)
    with pytest.raises(ValueError, match="max_bytes"):
        load_gtsrb(root, image_size=30_000)  # 10.8 GB of output at the default limit


def test_gtsrb_image_is_bounded_by_max_bytes(tmp_path):
    root = tmp_path / "root"
    _gtsrb(root)
    (root / "00000" / "a.ppm").write_bytes(b"P6\n600 600\n255\n" + bytes(600 * 600 * 3))
    (root / "00000" / "GT-00000.csv").write_text(_GT_HEADER + "a.ppm;600;600;0;0;600;600;0\n")
    with pytest.raises(ValueError, match="the 600x600 image as float32 need"):
        load_gtsrb(root, max_bytes=2 * 10**6)


# --- CSAW HackML (.h5) -----------------------------------------------------------------------------------------

_SHAPE = (2, 1, 4, 4)


@pytest.fixture
def h5py():
    return pytest.importorskip("h5py")


def _hackml(path, **extra):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("label", data=np.zeros(2, np.int64))
        for key, value in extra.items():
            if callable(value):
                value(f)
            else:
                f.create_dataset(key, data=value)
    return path


def test_hackml_external_storage_is_refused(tmp_path, h5py):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    path = _hackml(tmp_path / "x.h5", data=lambda f: f.create_dataset(
        "data", shape=_SHAPE, dtype=np.uint8, external=[(str(secret), 0, 32)]))
    with pytest.raises(ValueError, match=f"{_named(path)}: 'data' keeps its data in external file.*secret.txt"):
        load_hackml_h5(path)


def test_hackml_links_and_virtual_datasets_are_refused(tmp_path, h5py):
    other = _hackml(tmp_path / "other.h5", data=np.full(_SHAPE, 7, np.uint8))
    cases = {
        "ExternalLink": lambda f: f.__setitem__("data", h5py.ExternalLink(str(other), "/data")),
        "SoftLink": lambda f: (f.create_dataset("hidden", data=np.zeros(_SHAPE, np.uint8)),
                               f.__setitem__("data", h5py.SoftLink("/hidden"))),
    }
    for kind, make in cases.items():
        path = _hackml(tmp_path / f"{kind}.h5", data=make)
        with pytest.raises(ValueError, match=f"'data' is an HDF5 {kind}.*refusing to follow it"):
            load_hackml_h5(path)

    def virtual(f):
        layout = h5py.VirtualLayout(shape=_SHAPE, dtype=np.uint8)
        layout[:] = h5py.VirtualSource(str(other), "data", shape=_SHAPE)
        f.create_virtual_dataset("data", layout)

    with pytest.raises(ValueError, match="'data' is a virtual dataset"):
        load_hackml_h5(_hackml(tmp_path / "virtual.h5", data=virtual))


def test_hackml_filters_that_cannot_be_bounded_are_refused(tmp_path, h5py):
    path = _hackml(tmp_path / "x.h5", data=lambda f: f.create_dataset(
        "data", shape=_SHAPE, dtype=np.uint8, chunks=_SHAPE, compression=32001, allow_unknown_filter=True))
    with pytest.raises(ValueError, match="uses the HDF5 filter\\(s\\) \\[32001\\]"):
        load_hackml_h5(path)
    path = _hackml(tmp_path / "lzf.h5", data=lambda f: f.create_dataset(
        "data", data=np.zeros(_SHAPE, np.uint8), compression="lzf"))
    with pytest.raises(ValueError, match="uses the HDF5 filter\\(s\\) \\[32000\\]"):
        load_hackml_h5(path)


def test_hackml_fill_value_bomb_is_refused_before_reading(tmp_path, h5py):
    # a few KB on disk that declare 12 GB of float64 (and 6 GB more as float32)
    path = _hackml(tmp_path / "x.h5", data=lambda f: f.create_dataset(
        "data", shape=(200_000, 3, 55, 47), dtype=np.float64, chunks=(100, 3, 55, 47), compression="gzip",
        fillvalue=1.0))
    assert path.stat().st_size < 20_000
    with pytest.raises(ValueError, match="'data' declares shape \\(200000, 3, 55, 47\\) of float64.*max_bytes"):
        load_hackml_h5(path)
    path = _hackml(tmp_path / "small.h5", data=lambda f: f.create_dataset(
        "data", shape=(2000, 3, 55, 47), dtype=np.float64, chunks=(100, 3, 55, 47), compression="gzip"))
    with pytest.raises(ValueError, match="max_bytes=1000000"):
        load_hackml_h5(path, max_bytes=10**6)


def _zlib_zeros(n):
    compressor, out = zlib.compressobj(9), []
    block = bytes(2**20)
    for _ in range(n // 2**20):
        out.append(compressor.compress(block))
    return b"".join(out) + compressor.flush()


def test_hackml_deflate_chunk_bomb_is_refused(tmp_path, h5py):
    # HDF5's deflate filter grows its buffer until the stream ends: this 64-byte chunk would
    # make it allocate 32 MiB (a 2 MB file, 2 GB)
    def bomb(f):
        dset = f.create_dataset("data", shape=_SHAPE, dtype=np.uint8, chunks=_SHAPE, compression="gzip")
        dset.id.write_direct_chunk((0, 0, 0, 0), _zlib_zeros(32 * 2**20), filter_mask=0)

    with pytest.raises(ValueError, match="inflates beyond its 32 bytes \\(a compression bomb\\)"):
        load_hackml_h5(_hackml(tmp_path / "x.h5", data=bomb))


def test_hackml_corrupt_chunk_and_truncated_file(tmp_path, h5py):
    def corrupt(f):
        dset = f.create_dataset("data", shape=_SHAPE, dtype=np.uint8, chunks=_SHAPE, compression="gzip")
        dset.id.write_direct_chunk((0, 0, 0, 0), b"definitely not zlib", filter_mask=0)

    path = _hackml(tmp_path / "corrupt.h5", data=corrupt)
    with pytest.raises(ValueError, match=f"{_named(path)}: 'data' has a corrupt compressed chunk"):
        load_hackml_h5(path)
    path = _hackml(tmp_path / "truncated.h5", data=np.zeros((50, 3, 55, 47), np.uint8))
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ValueError, match=f"{_named(path)}.*(truncated|corrupt)"):
        load_hackml_h5(path)


def test_hackml_many_tiny_chunks_are_refused(tmp_path, h5py):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", shape=(2**21, 1, 1, 1), dtype=np.uint8, chunks=(1, 1, 1, 1))
        f.create_dataset("label", shape=(2**21,), dtype=np.uint8)
    with pytest.raises(ValueError, match="'data' is cut into 2097152 chunks"):
        load_hackml_h5(path)


def test_hackml_contract_labels_and_types(tmp_path, h5py):
    path = _hackml(tmp_path / "neg.h5", data=np.zeros(_SHAPE, np.uint8))
    with h5py.File(path, "a") as f:
        f["label"][0] = -7
    with pytest.raises(ValueError, match="'label' must hold non-negative labels.*-7"):
        load_hackml_h5(path)
    path = _hackml(tmp_path / "str.h5", data=np.array([["a"] * 4] * 2, dtype=h5py.string_dtype()))
    with pytest.raises(ValueError, match="'data' must hold numbers"):
        load_hackml_h5(path)


def test_hackml_fifo_is_refused(tmp_path, h5py):
    os.mkfifo(tmp_path / "x.h5")
    with pytest.raises((ValueError, FileNotFoundError), match="x.h5"):
        load_hackml_h5(tmp_path / "x.h5")


# --- Trigger files (.npz) --------------------------------------------------------------------------------------


def _npy_header(shape, descr="<f4"):
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _npz(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, raw in members.items():
            zf.writestr(name, raw)
    return path


def test_trigger_npz_bomb_is_refused_from_its_header(tmp_path):
    # mask.npy declares a (32768, 32768) float32 array (4 GiB) in a file of a few hundred bytes
    path = _npz(tmp_path / "t.npz", {"mask.npy": _npy_header((2**15, 2**15)) + bytes(64),
                                     "pattern.npy": _npy_header((2**15, 2**15)) + bytes(64)})
    with pytest.raises(ValueError, match=f"{_named(path)}: the trigger's mask .* need .*max_bytes"):
        Trigger.load(path)


def test_trigger_compressed_bomb_is_checked_against_the_image_shape(tmp_path):
    mask = _npy_header((4096, 4096)) + bytes(4096 * 4096 * 4)  # 64 MiB deflated into ~64 KB
    path = _npz(tmp_path / "t.npz", {"mask.npy": mask, "pattern.npy": mask}, zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="images of shape \\(1, 8, 8\\) need \\(H, W\\) = \\(8, 8\\)"):
        Trigger.load(path, image_shape=(8, 8))
    with pytest.raises(ValueError, match="max_bytes"):
        Trigger.load(path, max_bytes=2**20)


def test_trigger_pickles_and_object_arrays_are_refused(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "object.npz"
    np.savez(path, mask=np.array([Evil()], dtype=object), pattern=np.ones((4, 4)))
    with pytest.raises(ValueError, match="pickle"):
        Trigger.load(path)
    path = tmp_path / "pickle.npz"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="pickle|not an .npz archive"):
        Trigger.load(path)
    assert "pwned" not in capsys.readouterr().out


def test_trigger_truncated_corrupt_and_odd_files(tmp_path):
    good = tmp_path / "good.npz"
    Trigger.patch((1, 8, 8), size=2).save(good)
    raw = good.read_bytes()
    path = tmp_path / "bad.npz"
    for content, message in [(raw[: len(raw) // 2], "not an .npz archive"), (b"", "not an .npz archive"),
                             (raw.replace(b"mask.npy", b"mosk.npy"), "missing \\['mask'\\]")]:
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{_named(path)}.*{message}"):
            Trigger.load(path)
    # a bzip2 member: zipfile inflates those without an output bound
    _npz(path, {"mask.npy": _npy_header((8, 8)) + bytes(256), "pattern.npy": _npy_header((8, 8)) + bytes(256)},
         zipfile.ZIP_BZIP2)
    with pytest.raises(ValueError, match="zip method 12"):
        Trigger.load(path)
    _npz(path, {"mask.npy": _npy_header((8, 8), "<c8") + bytes(512), "pattern.npy": _npy_header((8, 8)) + bytes(256)})
    with pytest.raises(ValueError, match="'mask.npy' holds complex64 values"):
        Trigger.load(path)
    _npz(path, {"mask.npy": _npy_header((8, 8)) + bytes(100), "pattern.npy": _npy_header((8, 8)) + bytes(256)})
    with pytest.raises(ValueError, match="truncated"):
        Trigger.load(path)
    os.mkfifo(tmp_path / "fifo.npz")
    with pytest.raises(ValueError, match="is a FIFO"):
        Trigger.load(tmp_path / "fifo.npz")


def test_trigger_save_is_atomic_under_concurrent_loads(tmp_path):
    path = tmp_path / "t.npz"
    small, large = Trigger.patch((3, 64, 64), size=2), Trigger.blend(np.random.default_rng(0).random((3, 64, 64)), 0.2)
    small.save(path)
    stop, failures = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                assert Trigger.load(path) in (small, large)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            (small if i % 2 else large).save(path)
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]  # no temporary file left behind

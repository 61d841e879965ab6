"""Loaders for data sets the user has on disk (nothing is downloaded).

Files from third parties are read with parsers that execute no code: IDX and
CIFAR-10 binary batches are raw bytes, and CIFAR-10's "python version"
batches are read with an unpickler that only rebuilds plain containers and
bytes (:class:`_DataOnlyUnpickler`), never arbitrary objects. GTSRB's PPM
images and CSV annotations are read by the small parsers below, and the CSAW
HackML ``.h5`` files with h5py, which reads arrays only.
"""

from __future__ import annotations

import csv
import gzip
import io
import numbers
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["load_mnist", "load_cifar10", "load_gtsrb", "load_hackml_h5"]

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


def _check_subset(subset):
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test'; got {subset!r}.")


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


_PNM_SPACE = b" \t\n\v\f\r"


def _read_ppm(path):
    """Read a PPM image (binary P6 or plain P3) as an (H, W, 3) float32 array in [0, 1]."""
    magic = Path(path).read_bytes()[:2]
    if magic not in (b"P6", b"P3"):
        raise ValueError(f"{path} is not a PPM image: it starts with {magic!r}, expected b'P6' (binary) or b'P3' (plain).")
    return _read_pnm(path)


_PNM_KINDS = {b"P2": ("PGM", 1, False), b"P5": ("PGM", 1, True), b"P3": ("PPM", 3, False), b"P6": ("PPM", 3, True)}


def _read_pnm(path):
    """Read a PGM or PPM image (binary P5/P6 or plain P2/P3) as an (H, W, C) float32 array in [0, 1].

    C is 1 for PGM (grey) and 3 for PPM (colour).
    """
    raw = Path(path).read_bytes()
    magic = raw[:2]
    if magic not in _PNM_KINDS:
        raise ValueError(
            f"{path} is not a PGM or PPM image: it starts with {magic!r}, expected b'P5' or b'P2' (PGM), "
            "b'P6' or b'P3' (PPM)."
        )
    kind, channels, binary = _PNM_KINDS[magic]
    pos, fields = 2, []
    while len(fields) < 3:
        start = pos
        while pos < len(raw) and (raw[pos] in _PNM_SPACE or raw[pos] == ord("#")):
            if raw[pos] == ord("#"):  # a header comment runs to the end of its line
                while pos < len(raw) and raw[pos] not in b"\r\n":
                    pos += 1
            else:
                pos += 1
        digits = pos
        while pos < len(raw) and raw[pos] in b"0123456789":
            pos += 1
        if pos == start or pos == digits:
            raise ValueError(f"{path}: malformed {kind} header: expected width, height and maximum value after {magic!r}.")
        fields.append(int(raw[digits:pos]))
    width, height, maxval = fields
    if width < 1 or height < 1 or not 1 <= maxval <= 65535:
        raise ValueError(
            f"{path}: malformed {kind} header: width {width}, height {height}, maximum value {maxval} "
            "(expected positive sizes and a maximum value in [1, 65535])."
        )
    if pos >= len(raw) or raw[pos] not in _PNM_SPACE:
        raise ValueError(f"{path}: malformed {kind} header: no whitespace after the maximum value.")
    n = width * height * channels
    if binary:
        dtype = np.dtype(np.uint8 if maxval < 256 else ">u2")
        data = raw[pos + 1:]
        if len(data) < n * dtype.itemsize:
            raise ValueError(
                f"{path}: truncated {kind}: the header announces {width}x{height} pixels ({n * dtype.itemsize} bytes "
                f"of data) but the file holds {len(data)}."
            )
        pixels = np.frombuffer(data, dtype, count=n)
    else:
        tokens = re.sub(rb"#[^\r\n]*", b"", raw[pos:]).split()
        if len(tokens) < n:
            raise ValueError(
                f"{path}: truncated {kind}: the header announces {width}x{height} pixels ({n} values) but the file "
                f"holds {len(tokens)}."
            )
        if not all(t.isdigit() for t in tokens[:n]):
            raise ValueError(f"{path}: malformed {kind}: a plain ({magic.decode()}) image holds non-negative decimal "
                             "integers only.")
        pixels = np.array([int(t) for t in tokens[:n]], np.int64)
    if pixels.max(initial=0) > maxval:
        raise ValueError(f"{path}: malformed {kind}: pixel values exceed the header's maximum value {maxval}.")
    return pixels.reshape(height, width, channels).astype(np.float32) / np.float32(maxval)


_GTSRB_ROI = ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")


def _read_gtsrb_csv(csv_path, folder, need_roi):
    """Rows of a GTSRB annotation file: (image path, csv path, label, (width, height) or None, roi or None)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=";")
        header = [cell.strip() for cell in next(reader, [])]
        needed = ["Filename", "ClassId", *(_GTSRB_ROI if need_roi else ())]
        missing = [name for name in needed if name not in header]
        if missing:
            raise ValueError(
                f"{csv_path} lacks the column(s) {', '.join(missing)} (found: {';'.join(header) or 'nothing'}); "
                "expected Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId."
            )
        col = {name: i for i, name in enumerate(header)}

        def integer(row, name):
            value = row[col[name]].strip() if col[name] < len(row) else ""
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{csv_path}, line {reader.line_num}: {name} must be an integer; got {value!r}.") from None

        records = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            name = row[col["Filename"]].strip() if col["Filename"] < len(row) else ""
            if not name:
                raise ValueError(f"{csv_path}, line {reader.line_num}: no Filename.")
            size = (integer(row, "Width"), integer(row, "Height")) if "Width" in col and "Height" in col else None
            roi = tuple(integer(row, c) for c in _GTSRB_ROI) if need_roi else None
            records.append((folder / name, csv_path, integer(row, "ClassId"), size, roi))
    return records


def _gtsrb_bases(root, part):
    """The folders searched for a GTSRB part ("Final_Training" or "Final_Test"): root first."""
    return [root, root / "Images", root / part / "Images", root / "GTSRB" / part / "Images"]


def _gtsrb_train_records(root, need_roi):
    for base in _gtsrb_bases(root, "Final_Training"):
        classes = sorted(p for p in base.iterdir() if p.is_dir() and p.name.isdigit()) if base.is_dir() else []
        if classes:
            break
    else:
        raise FileNotFoundError(
            f"no GTSRB training images in directory {root}: looked for class folders 00000, 00001, ... in it, "
            "Images/, Final_Training/Images/ and GTSRB/Final_Training/Images/."
        )
    records = []
    for folder in classes:
        csv_path = folder / f"GT-{folder.name}.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"no GTSRB annotation file in {folder}: looked for {csv_path.name}.")
        records += _read_gtsrb_csv(csv_path, folder, need_roi)
    return records


def _gtsrb_test_records(root, need_roi):
    images = next((b for b in _gtsrb_bases(root, "Final_Test") if b.is_dir() and any(b.glob("*.ppm"))), None)
    if images is None:
        raise FileNotFoundError(
            f"no GTSRB test images in directory {root}: looked for .ppm files in it, Images/, Final_Test/Images/ "
            "and GTSRB/Final_Test/Images/."
        )
    # The labelled GT-final_test.csv ships apart from the images (GTSRB_Final_Test_GT.zip): look for it in the
    # Images folder and every folder between it and `directory`.
    folders = [images]
    while folders[-1] != root:
        folders.append(folders[-1].parent)
    for folder in folders:
        if (folder / "GT-final_test.csv").is_file():
            return _read_gtsrb_csv(folder / "GT-final_test.csv", images, need_roi)
    unlabelled = [f / "GT-final_test.test.csv" for f in folders if (f / "GT-final_test.test.csv").is_file()]
    hint = (
        f" ({unlabelled[0]} has no ClassId column: the test labels are distributed separately, as GT-final_test.csv "
        "in GTSRB_Final_Test_GT.zip)" if unlabelled else ""
    )
    raise FileNotFoundError(
        f"no GTSRB test annotation file in directory {root}: looked for GT-final_test.csv in "
        f"{', '.join(map(str, folders))}{hint}."
    )


def load_gtsrb(directory, subset="train", image_size=32, crop_roi=True):
    """Load the German Traffic Sign Recognition Benchmark (GTSRB) from ``directory``.

    Reads the data set as distributed [1]_: PPM images and semicolon-separated
    annotation files (``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``).
    Each image is cropped to the sign's region of interest (ROI), resized to
    ``image_size`` x ``image_size`` and scaled to [0, 1].

    Parameters
    ----------
    directory : str or path-like
        The data set's root or its ``Images`` folder. For ``subset="train"``,
        the folder holding the class folders ``00000`` ... ``00042`` (each
        with its ``GT-000NN.csv``), or a folder above it: ``Images/``,
        ``Final_Training/Images/`` and ``GTSRB/Final_Training/Images/`` are
        searched. For ``subset="test"``, the folder holding the test
        ``.ppm`` files, or a folder above it (``Images/``,
        ``Final_Test/Images/``, ``GTSRB/Final_Test/Images/``); the labelled
        ``GT-final_test.csv``, distributed separately from the images, may
        lie in the ``Images`` folder or in any folder between it and
        ``directory``.
    subset : {"train", "test"}, default="train"
        Which part of the benchmark to read.
    image_size : int, default=32
        Height and width of the returned images.
    crop_roi : bool, default=True
        Crop each image to its ROI (``Roi.X1:Roi.X2``, ``Roi.Y1:Roi.Y2``)
        before resizing, dropping the border of about 10% around the sign.

    Returns
    -------
    X : ndarray of shape (n, 3, image_size, image_size), float32 in [0, 1]
        Images in the order of the annotation files (class by class for
        ``subset="train"``).
    y : ndarray of shape (n,), int64
        The ``ClassId`` of each image.

    Raises
    ------
    FileNotFoundError
        If ``directory``, the images or an annotation file cannot be found.
    ValueError
        If ``subset`` or ``image_size`` is invalid, an annotation file lacks a
        column, or an image is not a well-formed PPM (its file is named).

    Notes
    -----
    PPM images, binary (``P6``) and plain (``P3``), are read by a small parser
    of backdoorlearn's own; no imaging library is needed. ``Roi.X2`` and
    ``Roi.Y2`` are read as exclusive ends (the sign spans columns ``Roi.X1``
    to ``Roi.X2 - 1``), as Python slicing and PIL's ``crop`` read them.
    Resizing is bilinear with antialiasing
    (:func:`torch.nn.functional.interpolate`), so shrinking a large image
    averages its pixels instead of skipping them.

    References
    ----------
    .. [1] J. Stallkamp, M. Schlipsing, J. Salmen and C. Igel, "Man vs.
       computer: Benchmarking machine learning algorithms for traffic sign
       recognition", Neural Networks 32, pp. 323-332, 2012.

    Examples
    --------
    >>> import os, tempfile
    >>> from backdoorlearn.datasets import load_gtsrb
    >>> with tempfile.TemporaryDirectory() as root:
    ...     folder = os.path.join(root, "Final_Training", "Images", "00007")
    ...     os.makedirs(folder)
    ...     # a red 2x2 sign inside a 1-pixel white border
    ...     pixels = [255] * 3 * 4 + ([255] * 3 + [255, 0, 0] * 2 + [255] * 3) * 2 + [255] * 3 * 4
    ...     with open(os.path.join(folder, "00000_00000.ppm"), "wb") as f:
    ...         _ = f.write(b"P6\\n4 4\\n255\\n" + bytes(pixels))
    ...     with open(os.path.join(folder, "GT-00007.csv"), "w") as f:
    ...         _ = f.write("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\\n"
    ...                     "00000_00000.ppm;4;4;1;1;3;3;7\\n")
    ...     X, y = load_gtsrb(root, image_size=8)
    >>> X.shape, X.dtype, y.tolist()
    ((1, 3, 8, 8), dtype('float32'), [7])
    >>> X[0, :, 0, 0].tolist(), X[0, :, 7, 7].tolist()   # red everywhere: the border is cropped
    ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    """
    _check_subset(subset)
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1; got {image_size!r}.")
    if not isinstance(crop_roi, (bool, np.bool_)):
        raise ValueError(f"crop_roi must be True or False; got {crop_roi!r}.")
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"directory {os.fspath(directory)!r} does not exist or is not a folder.")
    find = _gtsrb_train_records if subset == "train" else _gtsrb_test_records
    records = find(root, bool(crop_roi))
    if not records:
        raise ValueError(f"no GTSRB {subset} image is listed in the annotation files under directory {root}.")
    size = int(image_size)
    X = np.empty((len(records), 3, size, size), np.float32)
    for i, (ppm, csv_path, _, shape, roi) in enumerate(records):
        if not ppm.is_file():
            raise FileNotFoundError(f"{csv_path} lists {ppm.name}, which is not in {ppm.parent}.")
        image = _read_ppm(ppm)
        h, w = image.shape[:2]
        if shape is not None and shape != (w, h):
            raise ValueError(f"{ppm} is {w}x{h} pixels but {csv_path} says {shape[0]}x{shape[1]}.")
        if roi is not None:
            x1, y1, x2, y2 = roi
            if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
                raise ValueError(f"{csv_path}: the ROI {roi} of {ppm.name} does not lie inside its {w}x{h} image.")
            image = image[y1:y2, x1:x2]
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        X[i] = t[0].clamp_(0.0, 1.0).numpy()
    y = np.array([r[2] for r in records], np.int64)
    return X, y


def load_hackml_h5(path):
    """Load one data file of the CSAW HackML 2020 backdoor challenge.

    The challenge [1]_ ships BadNets-style [2]_ backdoored face classifiers
    with their data as HDF5 files (``clean_validation_data.h5``,
    ``clean_test_data.h5``, ``sunglasses_poisoned_data.h5``, ...): 55x47
    colour images of the 1283 people of the YouTube Faces data set, in the
    datasets ``data`` and ``label``.

    Parameters
    ----------
    path : str or path-like
        The ``.h5`` file. Its ``data`` must be 4-D, channels first
        ``(n, C, H, W)`` or channels last ``(n, H, W, C)`` with 1 or 3
        channels, and ``label`` must hold one whole-number label per image.

    Returns
    -------
    X : ndarray of shape (n, 3, 55, 47), float32 in [0, 1]
        The images, channels first (``(n, C, H, W)`` for other sizes).
    y : ndarray of shape (n,), int64
        The labels.

    Raises
    ------
    ImportError
        If h5py is not installed.
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not HDF5, lacks ``data`` or ``label`` (the keys found
        are listed), or holds arrays of the wrong shape or range.

    Notes
    -----
    The challenge's files store ``data`` channels first, ``(n, 3, 55, 47)``,
    with values 0-255 (its evaluation script transposes them to channels last
    for Keras). The layout is detected from the shape: axis 1 of size 1 or 3
    means channels first (the challenge's layout wins when both axis 1 and
    the last axis could be channels), otherwise a last axis of size 1 or 3
    means channels last. The scale is detected from the values: integers are
    0-255, floats are 0-255 when any exceeds 1 and are kept as they are when
    all lie in [0, 1] (a file already scaled to [0, 1]). Values outside
    [0, 255], NaN and inf are refused.

    h5py is an optional dependency: ``pip install h5py`` or
    ``pip install backdoorlearn[h5]``. It reads arrays only; nothing in the
    file is executed.

    References
    ----------
    .. [1] CSAW HackML 2020, the backdoor-detection challenge of NYU's Cyber
       Security Awareness Week, https://github.com/csaw-hackml/CSAW-HackML-2020.
    .. [2] T. Gu, K. Liu, B. Dolan-Gavitt and S. Garg, "BadNets: Evaluating
       Backdooring Attacks on Deep Neural Networks", IEEE Access 7,
       pp. 47230-47244, 2019.

    Examples
    --------
    >>> import os, tempfile
    >>> import h5py, numpy as np
    >>> from backdoorlearn.datasets import load_hackml_h5
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "clean_validation_data.h5")
    ...     with h5py.File(path, "w") as f:
    ...         _ = f.create_dataset("data", data=np.full((2, 3, 55, 47), 255.0, np.float32))
    ...         _ = f.create_dataset("label", data=np.array([0.0, 1282.0]))
    ...     X, y = load_hackml_h5(path)
    >>> X.shape, X.dtype, float(X.max()), y.tolist()
    ((2, 3, 55, 47), dtype('float32'), 1.0, [0, 1282])
    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "load_hackml_h5 reads HDF5 files with h5py, which is not installed: pip install h5py "
            "(or pip install backdoorlearn[h5])."
        ) from exc
    name = os.fspath(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"path {name!r} does not exist or is not a file.")
    if not h5py.is_hdf5(path):
        raise ValueError(f"path {name!r} is not an HDF5 file.")
    with h5py.File(path, "r") as f:
        missing = [key for key in ("data", "label") if not isinstance(f.get(key), h5py.Dataset)]
        if missing:
            raise ValueError(
                f"{name} has no dataset {' or '.join(map(repr, missing))}: a CSAW HackML file holds "
                f"'data' and 'label'; found keys {sorted(f.keys())}."
            )
        data = np.asarray(f["data"][()])
        labels = np.asarray(f["label"][()])
    if data.ndim != 4 or len(data) == 0:
        raise ValueError(
            f"{name}: 'data' must hold images of shape (n, 3, 55, 47) or (n, 55, 47, 3) with n >= 1; "
            f"got shape {data.shape}."
        )
    if data.shape[1] not in (1, 3):
        if data.shape[-1] not in (1, 3):
            raise ValueError(
                f"{name}: 'data' of shape {data.shape} has neither channels first (axis 1 of size 1 or 3) "
                "nor channels last (last axis of size 1 or 3)."
            )
        data = data.transpose(0, 3, 1, 2)
    if data.dtype.kind not in "uif":
        raise ValueError(f"{name}: 'data' must hold numbers; got dtype {data.dtype}.")
    X = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: 'data' holds NaN or inf.")
    lo, hi = float(X.min()), float(X.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: 'data' must lie in [0, 255] (or [0, 1]); got values from {lo} to {hi}.")
    if data.dtype.kind in "ui" or hi > 1:
        X /= np.float32(255)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != len(X):
        raise ValueError(
            f"{name}: 'label' must hold one label per image ({len(X)}); got shape {labels.shape}."
        )
    if labels.dtype.kind not in "uif" or (
        labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all())
    ):
        raise ValueError(f"{name}: 'label' must hold whole numbers; got {labels[:5]!r} ...")
    return X, labels.astype(np.int64)

"""The German Traffic Sign Recognition Benchmark (GTSRB) from its PPM images and CSV files.

The annotation files name the images; every name must stay inside its folder (no absolute
path, no ``..``, no symbolic link leading out), and every folder and file read must stay
inside the ``directory`` given, so a tampered CSV cannot make the loader read other files.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._files import DEFAULT_MAX_BYTES, MemoryBudget, contained_path, open_regular, read_exact
from ._common import _check_subset

__all__ = ["load_gtsrb"]

_PNM_SPACE = b" \t\n\v\f\r"


# What one value of a plain (P3) image costs while it is parsed: a bytes token, an int, list slots.
_P3_BYTES_PER_TOKEN = 128


_PNM_KINDS = {b"P2": ("PGM", 1, False), b"P5": ("PGM", 1, True), b"P3": ("PPM", 3, False), b"P6": ("PPM", 3, True)}


def _read_ppm(path, budget):
    """Read a PPM image (binary P6 or plain P3) as an (H, W, 3) float32 array in [0, 1]."""
    return _read_pnm(path, budget, kinds=(b"P6", b"P3"))


def _read_pnm(path, budget, kinds=tuple(_PNM_KINDS)):
    """Read a PGM or PPM image (binary P5/P6, plain P2/P3) as an (H, W, C) float32 array in [0, 1].

    C is 1 for PGM (grey) and 3 for PPM (colour). ``budget`` is charged with
    the file and what decoding it needs before either is read.
    """
    f, size = open_regular(path, what="the image")
    with f:
        budget.charge(size, f"{path}: the image file")
        raw = bytes(read_exact(f, size, path=path, what="the image"))
    magic = raw[:2]
    if magic not in kinds:
        expected = " or ".join(f"{k!r} ({_PNM_KINDS[k][0]}, {'binary' if _PNM_KINDS[k][2] else 'plain'})"
                               for k in kinds)
        raise ValueError(f"{path} is not a {'/'.join(sorted({_PNM_KINDS[k][0] for k in kinds}))} image: it starts "
                         f"with {magic!r}, expected {expected}.")
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
    budget.charge(n * 4, f"{path}: the {width}x{height} image as float32")
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
        if n > (len(raw) - pos) // 2 + 1:  # each value takes a digit and a separator
            raise ValueError(
                f"{path}: truncated {kind}: the header announces {width}x{height} pixels ({n} values) but the file "
                f"holds {len(raw) - pos} bytes after it."
            )
        budget.charge(len(raw) - pos + ((len(raw) - pos) // 2 + 1) * _P3_BYTES_PER_TOKEN,
                      f"{path}: parsing the plain ({magic.decode()}) pixel values")
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
    image = pixels.reshape(height, width, channels).astype(np.float32)
    image /= np.float32(maxval)
    return image


_GTSRB_ROI = ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2")


# What one annotation row costs once parsed (a path, a tuple, a few ints), counted against max_bytes.
_RECORD_BYTES = 1024


def _inside(root, path):
    """``path`` (a folder or file below ``root``), refused if it leads outside ``root``."""
    return contained_path(root, path.relative_to(root), source=f"the data set in directory {root}")


def _read_gtsrb_csv(root, csv_path, folder, need_roi, budget, class_id=None):
    """Rows of a GTSRB annotation file: (image path, csv path, label, (width, height) or None, roi or None).

    Every image path stays inside ``folder``; with ``class_id`` (a training class folder),
    every ``ClassId`` must equal it.
    """
    _inside(root, csv_path)
    raw, size = open_regular(csv_path, what="the annotation file")
    budget.charge(size, f"{csv_path}: the annotation file")
    with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        try:
            return _parse_gtsrb_csv(f, csv_path, folder, need_roi, budget, class_id)
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"{csv_path} is not a semicolon-separated UTF-8 annotation file ({exc}).") from None


def _parse_gtsrb_csv(f, csv_path, folder, need_roi, budget, class_id):
    reader = csv.reader(f, delimiter=";")
    header = [cell.strip() for cell in next(reader, [])]
    needed = ["Filename", "ClassId", *(_GTSRB_ROI if need_roi else ())]
    missing = [name for name in needed if name not in header]
    if missing:
        raise ValueError(
            f"{csv_path} lacks the column(s) {', '.join(missing)} (found: {';'.join(header)[:200] or 'nothing'}); "
            "expected Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId."
        )
    col = {name: i for i, name in enumerate(header)}

    def integer(row, name):
        value = row[col[name]].strip() if col[name] < len(row) else ""
        try:
            return int(value)
        except ValueError:
            raise ValueError(
                f"{csv_path}, line {reader.line_num}: {name} must be an integer; got {value[:40]!r}."
            ) from None

    records = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        budget.charge(_RECORD_BYTES, f"{csv_path}: the annotation rows")
        name = row[col["Filename"]].strip() if col["Filename"] < len(row) else ""
        if not name:
            raise ValueError(f"{csv_path}, line {reader.line_num}: no Filename.")
        image = contained_path(folder, name, source=f"{csv_path}, line {reader.line_num},")
        size = (integer(row, "Width"), integer(row, "Height")) if "Width" in col and "Height" in col else None
        roi = tuple(integer(row, c) for c in _GTSRB_ROI) if need_roi else None
        label = integer(row, "ClassId")
        if label < 0 or (class_id is not None and label != class_id):
            expected = "a non-negative integer" if class_id is None else f"{class_id}, the number of its class folder"
            raise ValueError(f"{csv_path}, line {reader.line_num}: ClassId must be {expected}; got {label}.")
        records.append((image, csv_path, label, size, roi))
    return records


def _gtsrb_bases(root, part):
    """The folders searched for a GTSRB part ("Final_Training" or "Final_Test"): root first."""
    return [root, root / "Images", root / part / "Images", root / "GTSRB" / part / "Images"]


def _gtsrb_train_records(root, need_roi, budget):
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
        _inside(root, folder)
        csv_path = folder / f"GT-{folder.name}.csv"
        if not csv_path.exists():
            raise FileNotFoundError(f"no GTSRB annotation file in {folder}: looked for {csv_path.name}.")
        records += _read_gtsrb_csv(root, csv_path, folder, need_roi, budget, class_id=int(folder.name))
    return records


def _gtsrb_test_records(root, need_roi, budget):
    images = next((b for b in _gtsrb_bases(root, "Final_Test") if b.is_dir() and any(b.glob("*.ppm"))), None)
    if images is None:
        raise FileNotFoundError(
            f"no GTSRB test images in directory {root}: looked for .ppm files in it, Images/, Final_Test/Images/ "
            "and GTSRB/Final_Test/Images/."
        )
    _inside(root, images)
    # The labelled GT-final_test.csv ships apart from the images (GTSRB_Final_Test_GT.zip): look for it in the
    # Images folder and every folder between it and `directory`.
    folders = [images]
    while folders[-1] != root:
        folders.append(folders[-1].parent)
    for folder in folders:
        if (folder / "GT-final_test.csv").exists():
            return _read_gtsrb_csv(root, folder / "GT-final_test.csv", images, need_roi, budget)
    unlabelled = [f / "GT-final_test.test.csv" for f in folders if (f / "GT-final_test.test.csv").is_file()]
    hint = (
        f" ({unlabelled[0]} has no ClassId column: the test labels are distributed separately, as GT-final_test.csv "
        "in GTSRB_Final_Test_GT.zip)" if unlabelled else ""
    )
    raise FileNotFoundError(
        f"no GTSRB test annotation file in directory {root}: looked for GT-final_test.csv in "
        f"{', '.join(map(str, folders))}{hint}."
    )


def load_gtsrb(directory, subset="train", image_size=32, crop_roi=True, *, max_bytes=DEFAULT_MAX_BYTES):
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
    max_bytes : int, default=2147483648 (2 GiB)
        The most memory, in bytes, the loader may use for the arrays it reads
        and returns (the training set at ``image_size=32`` needs about 500 MB).
        The output's size is checked against it once the annotation files are
        read and before any image is; each image's declared size before its
        pixels are decoded.

    Returns
    -------
    X : ndarray of shape (n, 3, image_size, image_size), float32 in [0, 1]
        Images in the order of the annotation files (class by class for
        ``subset="train"``).
    y : ndarray of shape (n,), int64
        The ``ClassId`` of each image, non-negative (0 to 42 for GTSRB); in
        the training set, the number of the image's class folder.

    Raises
    ------
    FileNotFoundError
        If ``directory``, the images or an annotation file cannot be found.
    ValueError
        If ``subset``, ``image_size`` or ``max_bytes`` is invalid, an
        annotation file lacks a column or holds a bad value (its line is
        named), names a file outside its folder, an image is not a well-formed
        PPM (its file is named), or the images need more than ``max_bytes``.

    Notes
    -----
    PPM images, binary (``P6``) and plain (``P3``), are read by a small parser
    of backdoorlearn's own; no imaging library is needed. The annotation
    files are treated as untrusted: a ``Filename`` must name a file inside
    its folder (absolute paths, ``..`` and symbolic links that lead out are
    refused), and nothing outside ``directory`` is read. ``Roi.X2`` and
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
    budget = MemoryBudget(max_bytes, caller="load_gtsrb")
    find = _gtsrb_train_records if subset == "train" else _gtsrb_test_records
    records = find(root, bool(crop_roi), budget)
    if not records:
        raise ValueError(f"no GTSRB {subset} image is listed in the annotation files under directory {root}.")
    size = int(image_size)
    budget.charge(len(records) * (3 * size * size * 4 + 8), f"{len(records)} images of 3x{size}x{size} float32")
    X = np.empty((len(records), 3, size, size), np.float32)
    for i, (ppm, csv_path, _, shape, roi) in enumerate(records):
        if not ppm.exists():
            raise FileNotFoundError(f"{csv_path} lists {ppm.name}, which is not in {ppm.parent}.")
        # what decoding one image needs is spent again for the next one
        image = _read_ppm(ppm, MemoryBudget(budget.left, caller="load_gtsrb"))
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

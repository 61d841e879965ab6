"""Clean data from a file or a folder, whatever its format: what ``audit`` and ``evaluate`` read.

Everything here parses data without executing it: ``.npz`` archives are read
with ``allow_pickle=False``, HDF5 with h5py, IDX and PGM/PPM by the parsers in
:mod:`._gtsrb`. Other image formats (PNG, JPEG, ...) go through Pillow when
it is installed; it is not a dependency of backdoorlearn.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from .._files import DEFAULT_MAX_BYTES, MemoryBudget, open_npz, read_npy
from ._gtsrb import _read_pnm
from ._hackml import load_hackml_h5
from ._mnist import load_mnist, read_idx

__all__ = ["load_data_file", "load_image_folder"]

_PNM_SUFFIXES = (".pgm", ".ppm", ".pnm")
_PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_IDX_NAMES = {"test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
              "train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte")}
SUPPORTED = (
    "a .npz archive with an array 'X' (and optionally labels 'y'), a CSAW HackML .h5 file ('data' and "
    "'label'), a folder of MNIST IDX files, or a folder of images (PGM/PPM; PNG, JPEG and others "
    "with Pillow installed)"
)


def load_data_file(path):
    """Load images, and their labels when the source has them, from a file or a folder.

    The format is told apart by content (files) or by what a folder holds:

    - a ``.npz`` archive (``numpy.savez``) with an array ``X`` of images and
      optionally ``y``, their labels; read with ``allow_pickle=False``. ``X``
      is used in the scale it is stored in (cast to float32): store it as
      the model expects its input. ``(n, H, W)`` is taken as grayscale
      ``(n, 1, H, W)``;
    - a CSAW HackML ``.h5`` file (:func:`load_hackml_h5`: ``data`` and
      ``label``, scaled to [0, 1]);
    - a folder of MNIST IDX files (:func:`load_mnist`; the ``t10k`` test
      files when both the training and the test files are there, since clean
      data for an audit should be data the model was not trained on; the
      labels are read when the label file is there);
    - a folder of images (:func:`load_image_folder`).

    Parameters
    ----------
    path : str or path-like
        The file or folder.

    Returns
    -------
    X : ndarray of shape (n_samples, C, H, W), float32
        The images, channels first, scaled as described above for each
        format.
    y : ndarray of shape (n_samples,) of int64, or None
        The label of each image; None when the source holds no labels.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is of none of the kinds above (they are listed), or its arrays
        do not hold images and labels.

    See Also
    --------
    load_image_folder : The folder-of-images reader.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from backdoorlearn.datasets import load_data_file
    >>> path = os.path.join(tempfile.mkdtemp(), "clean.npz")
    >>> np.savez(path, X=np.zeros((4, 8, 8), np.float32), y=[0, 1, 2, 3])
    >>> X, y = load_data_file(path)
    >>> X.shape, y.tolist()
    ((4, 1, 8, 8), [0, 1, 2, 3])
    """
    X, y, _ = _load(path)
    return X, y


def _load(path):
    """``(X, y, kind)`` where ``kind`` names the format read, for reports."""
    name = os.fspath(path)
    p = Path(name)
    if p.is_dir():
        idx = _idx_subset(p)
        if idx is not None:
            labels_there = any((p / f"{'t10k' if idx == 'test' else 'train'}{s}").exists()
                               for s in ("-labels-idx1-ubyte", "-labels-idx1-ubyte.gz", "-labels.idx1-ubyte",
                                         "-labels.idx1-ubyte.gz"))
            if labels_there:
                X, y = load_mnist(p, subset=idx)
            else:
                images = next(p / f"{n}{gz}" for n in _IDX_NAMES[idx] for gz in ("", ".gz")
                              if (p / f"{n}{gz}").exists())
                X, y = _idx_images(images), None
            return X, y, f"MNIST IDX folder ({idx} files)"
        X, y = load_image_folder(p)
        return X, y, "folder of images" + (" with labels" if y is not None else "")
    if not p.is_file():
        raise FileNotFoundError(f"path {name!r} does not exist.")
    with open(name, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        X, y = _load_npz(name)
        return X, y, ".npz archive"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        X, y = load_hackml_h5(name)
        return X, y, "CSAW HackML .h5 file"
    if head[:2] == b"\x00\x00" and len(head) >= 4 and head[3] == 3:
        return _idx_images(name), None, "IDX image file"
    raise ValueError(f"path {name!r} is not a data file of a supported kind: expected {SUPPORTED}.")


def _idx_subset(folder):
    found = [subset for subset, names in _IDX_NAMES.items()
             if any((folder / f"{n}{gz}").exists() for n in names for gz in ("", ".gz"))]
    return found[0] if found else None  # "test" is listed first: it wins when both are there


def _idx_images(path):
    budget = MemoryBudget(DEFAULT_MAX_BYTES, caller="load_data_file")
    images = read_idx(path, budget=budget, what="images", ndim=3, extra_bytes_per_item=4)
    return (images.astype(np.float32) / np.float32(255.0))[:, None]


def _load_npz(name):
    # The archive's members are read through the checks of backdoorlearn._files: each
    # header's declared size is bounded before its data are read; no pickle, no objects.
    with open_npz(name, max_size=DEFAULT_MAX_BYTES) as zf:
        keys = [m[:-4] for m in zf.namelist() if m.endswith(".npy")]
        if "X" not in keys:
            raise ValueError(f"{name} must hold an array 'X' of images (and optionally 'y', the labels); "
                             f"found arrays {keys}.")
        X = read_npy(zf, "X.npy", path=name, max_bytes=DEFAULT_MAX_BYTES // 2)
        y = read_npy(zf, "y.npy", path=name, max_bytes=DEFAULT_MAX_BYTES // 8) if "y" in keys else None
    if X.dtype.kind not in "uifb":
        raise ValueError(f"{name}: 'X' must hold numbers; got dtype {X.dtype}.")
    if X.ndim == 3:
        X = X[:, None]
    if X.ndim != 4 or len(X) == 0:
        raise ValueError(f"{name}: 'X' must hold images of shape (n, C, H, W) or (n, H, W) with n >= 1; "
                         f"got shape {X.shape}.")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: 'X' holds NaN or inf.")
    if y is not None:
        y = _check_label_array(y, len(X), f"{name}: 'y'")
    return X, y


def _check_label_array(y, n, what):
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{what} must hold one label per image ({n}); got an array of shape {y.shape}.")
    if y.dtype.kind not in "uif" or (y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all())):
        raise ValueError(f"{what} must hold whole-number labels; got dtype {y.dtype}.")
    if len(y) and y.min() < 0:
        raise ValueError(f"{what} must hold labels >= 0; got {y.min()}.")
    return y.astype(np.int64)


def load_image_folder(path):
    """Load a folder of images, with labels when it has one subfolder per label.

    Two layouts are read: images directly in ``path`` (no labels), or
    subfolders named by integer labels (``path/0/``, ``path/1/``, ...) holding
    the images of each label. Images are sorted by file name, so the order
    does not depend on the file system.

    PGM and PPM images (``.pgm``, ``.ppm``, ``.pnm``; binary or plain) are
    read without any extra package. PNG, JPEG, BMP, GIF, TIFF and WebP are
    read through Pillow, which backdoorlearn does not depend on: without it
    these files raise an ``ImportError`` saying so. Other files are skipped.

    Parameters
    ----------
    path : str or path-like
        The folder.

    Returns
    -------
    X : ndarray of shape (n_images, C, H, W), float32 in [0, 1]
        C is 1 when every image is grayscale, else 3 (grayscale images are
        repeated over the three channels). 16-bit images are scaled by
        65535, 8-bit ones by 255; an alpha channel is dropped.
    y : ndarray of shape (n_images,) of int64, or None
        The subfolders' labels; None for a flat folder.

    Raises
    ------
    ValueError
        If the folder holds no image, mixes images and label subfolders, has
        a subfolder not named by a label, or images of different sizes (the
        images are not resized: the model fixes their size).
    ImportError
        If a PNG, JPEG or other Pillow format is found and Pillow is missing.

    Examples
    --------
    >>> import os, tempfile
    >>> from backdoorlearn.datasets import load_image_folder
    >>> root = tempfile.mkdtemp()
    >>> for label in ("0", "1"):
    ...     os.mkdir(os.path.join(root, label))
    ...     with open(os.path.join(root, label, "a.pgm"), "wb") as f:
    ...         _ = f.write(b"P5 2 2 255\\n" + bytes([0, 255, 255, 0]))
    >>> X, y = load_image_folder(root)
    >>> X.shape, y.tolist(), float(X.max())
    ((2, 1, 2, 2), [0, 1], 1.0)
    """
    root = Path(os.fspath(path))
    if not root.is_dir():
        raise FileNotFoundError(f"path {os.fspath(path)!r} is not a folder.")
    entries = sorted(e for e in root.iterdir() if not e.name.startswith("."))
    subdirs = [e for e in entries if e.is_dir()]
    files = [e for e in entries if e.is_file() and _is_image(e)]
    if subdirs and files:
        raise ValueError(
            f"{root} mixes images ({files[0].name}, ...) and subfolders ({subdirs[0].name}, ...): put the images "
            "directly in the folder (no labels) or in one subfolder per label (0/, 1/, ...)."
        )
    if subdirs:
        bad = [d.name for d in subdirs if not re.fullmatch(r"\d+", d.name)]
        if bad:
            raise ValueError(f"{root}: subfolders must be named by their integer label (0, 1, ...); got {bad[:5]}.")
        items = [(f, int(d.name)) for d in sorted(subdirs, key=lambda d: int(d.name))
                 for f in sorted(d.iterdir()) if f.is_file() and not f.name.startswith(".") and _is_image(f)]
    else:
        items = [(f, None) for f in files]
    if not items:
        raise ValueError(
            f"{root} holds no image ({', '.join(_PNM_SUFFIXES + _PILLOW_SUFFIXES)}); expected {SUPPORTED}."
        )
    images = [_read_image(f) for f, _ in items]
    first = items[0][0]
    for (f, _), img in zip(items, images):
        if img.shape[:2] != images[0].shape[:2]:
            raise ValueError(
                f"{root}: the images must all have one size, the model's input size (they are not resized); "
                f"{first.name} is {images[0].shape[1]}x{images[0].shape[0]}, {f.name} is "
                f"{img.shape[1]}x{img.shape[0]} (width x height)."
            )
    channels = max(img.shape[2] for img in images)
    X = np.stack([np.repeat(img, channels // img.shape[2], axis=2) for img in images]).transpose(0, 3, 1, 2)
    y = None if subdirs == [] else np.array([label for _, label in items], dtype=np.int64)
    return np.ascontiguousarray(X, dtype=np.float32), y


def _is_image(path):
    return path.suffix.lower() in _PNM_SUFFIXES + _PILLOW_SUFFIXES


def _read_image(path):
    """One image as (H, W, C) float32 in [0, 1], C in (1, 3)."""
    if path.suffix.lower() in _PNM_SUFFIXES:
        return _read_pnm(path, MemoryBudget(DEFAULT_MAX_BYTES, caller="load_image_folder"))
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"{path} is a {path.suffix} image, which is read through Pillow, and Pillow is not installed: "
            "pip install pillow, or convert the images to PGM/PPM, which are read without it."
        ) from None
    bomb = getattr(Image, "DecompressionBombError", OSError)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode.startswith("I;16"):
                return (np.asarray(img, dtype=np.float32) / np.float32(65535))[..., None]
            if mode in ("1", "L", "LA"):
                return (np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255))[..., None]
            if mode in ("I", "F"):
                raise ValueError(f"{path}: {mode!r} (32-bit) images are not read; save 8- or 16-bit images.")
            return np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255)
    except (OSError, SyntaxError, bomb) as exc:  # Pillow's errors: unreadable, truncated, too large
        raise ValueError(f"{path} cannot be read as an image ({exc}).") from None

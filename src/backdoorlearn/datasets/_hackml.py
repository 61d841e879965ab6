"""The CSAW HackML 2020 challenge's ``.h5`` data files.

Read through :func:`backdoorlearn._files.h5_dataset`: only datasets stored in the file
itself, reached by hard links, with sizes declared within the memory limit and filters
whose output is bounded, are read; images are converted to float32 a block of rows at a
time, so the raw array is never held whole next to the result.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .._files import DEFAULT_MAX_BYTES, MemoryBudget, check_max_bytes, h5_dataset, open_h5

__all__ = ["load_hackml_h5"]

# Images are converted to float32 this many bytes of raw rows at a time.
_BLOCK_BYTES = 2**26


def load_hackml_h5(path, *, max_bytes=DEFAULT_MAX_BYTES):
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
    max_bytes : int, default=2147483648 (2 GiB)
        The most memory, in bytes, the loader may use for the arrays it reads
        and returns (the challenge's largest data file needs about 600 MB).
        The sizes the datasets declare are checked against it before any data
        are read.

    Returns
    -------
    X : ndarray of shape (n, 3, 55, 47), float32 in [0, 1]
        The images, channels first (``(n, C, H, W)`` for other sizes).
    y : ndarray of shape (n,), int64
        The labels, in [0, 2**31) (0 to 1282 in the challenge's files).

    Raises
    ------
    ImportError
        If h5py is not installed.
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not HDF5 or is truncated or corrupt, lacks ``data`` or
        ``label`` (the keys found are listed), holds arrays of the wrong shape
        or range, declares more than ``max_bytes``, or stores a dataset in a
        way that could read other files or memory without bound (external
        storage, links, virtual datasets, filters other than deflate, shuffle
        and fletcher32, a compressed chunk that inflates past its size).

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
    file is executed. The file is treated as untrusted: a dataset whose data
    live in another file (HDF5 external storage, an external or soft link, a
    virtual dataset) is refused, as is any filter whose output cannot be
    bounded before reading.

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
        import h5py  # noqa: F401  (a clear message here; _files imports it where it is used)
    except ImportError as exc:
        raise ImportError(
            "load_hackml_h5 reads HDF5 files with h5py, which is not installed: pip install h5py "
            "(or pip install backdoorlearn[h5])."
        ) from exc
    max_bytes = check_max_bytes(max_bytes, caller="load_hackml_h5")
    name = os.fspath(path)
    with open_h5(path) as f:
        missing = [key for key in ("data", "label") if f.get(key, getlink=True) is None]
        if missing:
            raise ValueError(
                f"{name} has no dataset {' or '.join(map(repr, missing))}: a CSAW HackML file holds "
                f"'data' and 'label'; found keys {sorted(f.keys())}."
            )
        data = h5_dataset(f, "data", path=name, max_bytes=max_bytes)
        labels_set = h5_dataset(f, "label", path=name, max_bytes=max_bytes)
        shape, dtype = data.shape, data.dtype
        if len(shape) != 4 or shape[0] == 0:
            raise ValueError(
                f"{name}: 'data' must hold images of shape (n, 3, 55, 47) or (n, 55, 47, 3) with n >= 1; "
                f"got shape {shape}."
            )
        channels_last = shape[1] not in (1, 3)
        if channels_last and shape[-1] not in (1, 3):
            raise ValueError(
                f"{name}: 'data' of shape {shape} has neither channels first (axis 1 of size 1 or 3) "
                "nor channels last (last axis of size 1 or 3)."
            )
        n = shape[0]
        label_shape = labels_set.shape
        if not (label_shape == (n,) or label_shape == (n, 1)):
            raise ValueError(
                f"{name}: 'label' must hold one label per image ({n}); got shape {label_shape}."
            )
        budget = MemoryBudget(max_bytes, caller="load_hackml_h5")
        per_row = math.prod(shape[1:])
        block = max(1, min(n, _BLOCK_BYTES // max(1, per_row * dtype.itemsize)))
        budget.charge(n * per_row * 5 + n * (labels_set.dtype.itemsize + 8) + block * per_row * (dtype.itemsize + 4),
                      f"{name}: 'data' of shape {shape} ({dtype}) as float32 and its labels")
        out_shape = (n, shape[3], shape[1], shape[2]) if channels_last else shape
        X = np.empty(out_shape, np.float32)
        try:
            for start in range(0, n, block):
                rows = np.asarray(data[start:start + block], dtype=np.float32)
                X[start:start + block] = rows.transpose(0, 3, 1, 2) if channels_last else rows
            labels = np.asarray(labels_set[()]).reshape(n)
        except OSError as exc:
            raise ValueError(f"{name}: reading the data failed, the file is corrupt ({exc}).") from None
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: 'data' holds NaN or inf.")
    lo, hi = float(X.min()), float(X.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: 'data' must lie in [0, 255] (or [0, 1]); got values from {lo} to {hi}.")
    if dtype.kind in "uib" or hi > 1:
        X /= np.float32(255)
    if labels.dtype.kind == "f" and not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise ValueError(f"{name}: 'label' must hold whole numbers; got {labels[:5]!r} ...")
    if labels.size and (labels.min() < 0 or labels.max() >= 2**31):
        raise ValueError(
            f"{name}: 'label' must hold non-negative labels below 2**31; got values from {labels.min()} to "
            f"{labels.max()}."
        )
    return X, labels.astype(np.int64)

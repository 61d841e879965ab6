"""The CSAW HackML 2020 challenge's ``.h5`` data files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["load_hackml_h5"]


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

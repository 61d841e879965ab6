"""Backdoor triggers in the Neural Cleanse form ``x' = (1 - m) * x + m * p``.

One object serves attacks (:class:`~backdoorlearn.BackdoorPoisoner`), the
triggers reversed by Neural Cleanse, unlearning and activation filters, so a
trigger found by a defense can be compared with, and stamped like, the one an
attacker used.
"""

from __future__ import annotations

import os

import numpy as np

from ._utils import check_images, check_label_value

__all__ = ["Trigger", "stamp"]


def stamp(X, mask, pattern):
    """Stamp ``pattern`` through ``mask``: ``(1 - mask) * X + mask * pattern``.

    The single stamping formula of the library; it works on numpy arrays and on
    torch tensors alike (broadcasting ``mask`` and ``pattern`` over the batch),
    and never writes into ``X``.

    Parameters
    ----------
    X : ndarray or Tensor of shape (n_samples, C, H, W)
    mask : ndarray or Tensor broadcastable to ``X``, values in [0, 1]
    pattern : ndarray or Tensor broadcastable to ``X``

    Returns
    -------
    X_stamped : same type as ``X``
    """
    return (1 - mask) * X + mask * pattern


def _as_chw(a, *, name, ndim_ok=(2, 3)):
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim not in ndim_ok:
        raise ValueError(
            f"{name} must be an array of shape (H, W) or (C, H, W); got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must not contain NaN or infinity.")
    if arr.ndim == 2:
        arr = arr[None]
    return arr


class Trigger:
    """A backdoor trigger: a mask and a pattern, stamped as ``(1 - m) * x + m * p``.

    This is the trigger form of Neural Cleanse (Wang et al., 2019): the mask
    ``m`` says how much of each pixel the pattern ``p`` replaces. A BadNets
    patch is a binary mask over a corner, a blended trigger is a constant mask
    ``alpha`` over the whole image, a reversed trigger is whatever Neural
    Cleanse found.

    Parameters
    ----------
    mask : array-like of shape (H, W), (1, H, W) or (C, H, W)
        Values in [0, 1]. A 2-D mask is shared by all colour channels.
    pattern : array-like of shape (H, W) or (C, H, W)
        What the masked pixels become. A 2-D (or one-channel) pattern is
        used for every channel.
    name : str, default=None
        A label used in plots and reprs.

    Attributes
    ----------
    mask : ndarray of shape (1 or C, H, W), float32
    pattern : ndarray of shape (1 or C, H, W), float32
    image_shape : tuple of int
        ``(C, H, W)`` when the mask or pattern fixes C, else ``(1, H, W)``.

    See Also
    --------
    BackdoorPoisoner : Poison a training set with triggers.

    References
    ----------
    .. [1] B. Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor
       Attacks in Neural Networks", IEEE S&P 2019.
    .. [2] T. Gu, B. Dolan-Gavitt, S. Garg, "BadNets: Identifying
       Vulnerabilities in the Machine Learning Model Supply Chain", 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import Trigger
    >>> trigger = Trigger.patch((1, 8, 8), size=2, location="bottom-right", color=1.0)
    >>> X = np.zeros((3, 1, 8, 8), dtype=np.float32)
    >>> X_t = trigger.apply(X)
    >>> X_t[0, 0, -2:, -2:]
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    >>> float(X.sum()), trigger.l1_norm
    (0.0, 4.0)
    """

    def __init__(self, mask, pattern, name=None):
        mask = _as_chw(mask, name="mask")
        pattern = _as_chw(pattern, name="pattern")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(
                f"mask values must lie in [0, 1]; got min {mask.min():.3g}, max {mask.max():.3g}."
            )
        if mask.shape[1:] != pattern.shape[1:]:
            raise ValueError(
                f"mask and pattern must have the same height and width; got mask "
                f"{mask.shape[1:]} and pattern {pattern.shape[1:]}."
            )
        if mask.shape[0] != 1 and pattern.shape[0] != 1 and mask.shape[0] != pattern.shape[0]:
            raise ValueError(
                f"mask and pattern must have the same number of channels or one of them 1; "
                f"got mask {mask.shape[0]} and pattern {pattern.shape[0]}."
            )
        self.mask = mask
        self.pattern = pattern
        self.name = name

    # ------------------------------------------------------------------ constructors
    @classmethod
    def patch(cls, image_shape, size=3, location="bottom-right", color=1.0, patch=None, margin=0, name=None):
        """A BadNets-style patch: a square (or any binary patch) at a location.

        Parameters
        ----------
        image_shape : tuple of int
            ``(C, H, W)`` or ``(H, W)`` of the images to stamp.
        size : int, default=3
            Side of the square patch; ignored when ``patch`` is given.
        location : {"bottom-right", "bottom-left", "top-right", "top-left", "center"} \
                or tuple of int, default="bottom-right"
            Corner of the image, or the ``(row, col)`` of the patch's top-left pixel.
        color : float or sequence of float, default=1.0
            Colour of the patch: one value, or one per channel.
        patch : array-like of shape (h, w) or (C, h, w), default=None
            A patch to paste instead of a plain square: its non-zero pixels
            form the mask, its values the pattern (``color`` is ignored). For a
            checkerboard pass ``np.indices((3, 3)).sum(0) % 2`` with a colour.
        margin : int, default=0
            Distance in pixels from the named corner.
        name : str, default=None
            A label used in plots and reprs.

        Returns
        -------
        trigger : Trigger
            The new trigger.
        """
        c, h, w = _image_shape(image_shape)
        if patch is None:
            if not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"size must be a positive integer; got {size!r}.")
            mask_patch = np.ones((1, size, size), np.float32)
            value_patch = np.broadcast_to(_color(color, c), (c, size, size)).astype(np.float32)
        else:
            p = _as_chw(patch, name="patch")
            mask_patch = (np.abs(p).max(axis=0, keepdims=True) > 0).astype(np.float32)
            if p.shape[0] == 1:
                value_patch = (_color(color, c) * (p > 0)).astype(np.float32)
            else:
                value_patch = p
        ph, pw = mask_patch.shape[1:]
        if ph > h or pw > w:
            raise ValueError(f"the patch ({ph}x{pw}) does not fit in images of size {h}x{w}.")
        r, col = _location(location, (h, w), (ph, pw), margin)
        mask = np.zeros((1, h, w), np.float32)
        pattern = np.zeros((c, h, w), np.float32)
        mask[:, r : r + ph, col : col + pw] = mask_patch
        pattern[:, r : r + ph, col : col + pw] = value_patch
        return cls(mask, pattern, name=name or "patch")

    @classmethod
    def blend(cls, pattern, alpha=0.2, name=None):
        """A blended trigger: ``x' = (1 - alpha) * x + alpha * pattern`` everywhere.

        Parameters
        ----------
        pattern : array-like of shape (H, W) or (C, H, W)
            The image blended in (e.g. random noise, a photo).
        alpha : float, default=0.2
            Blend ratio in (0, 1].
        name : str, default=None
            A label used in plots and reprs.

        Returns
        -------
        trigger : Trigger
            The new trigger.
        """
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1]; got {alpha!r}.")
        pattern = _as_chw(pattern, name="pattern")
        mask = np.full((1,) + pattern.shape[1:], alpha, np.float32)
        return cls(mask, pattern, name=name or "blend")

    @classmethod
    def from_image(cls, image, image_shape=None, location=(0, 0), threshold=0.5, color=None, opacity=1.0, name=None):
        """A watermark-style trigger from a glyph image (the trojan-watermark attack).

        The glyph's pixels above ``threshold`` form the mask (times
        ``opacity``); the pattern is the glyph itself, or a plain ``color``.

        Parameters
        ----------
        image : array-like of shape (h, w) or (C, h, w)
            The glyph, values in [0, 1].
        image_shape : tuple of int, default=None
            ``(C, H, W)`` of the images to stamp; ``None`` means the glyph's own size.
        location : tuple of int or str, default=(0, 0)
            Where the glyph's top-left corner goes (see :meth:`patch`).
        threshold : float, default=0.5
            Glyph pixels above it are part of the trigger.
        color : float or sequence of float, default=None
            Paint the glyph in this colour instead of its own values.
        opacity : float, default=1.0
            Mask value of the glyph's pixels, in (0, 1].
        name : str, default=None
            A label used in plots and reprs.

        Returns
        -------
        trigger : Trigger
            The new trigger.
        """
        glyph = _as_chw(image, name="image")
        if not 0 < opacity <= 1:
            raise ValueError(f"opacity must be in (0, 1]; got {opacity!r}.")
        on = glyph.max(axis=0, keepdims=True) > threshold
        if not on.any():
            raise ValueError(f"image has no pixel above threshold={threshold}; the trigger would be empty.")
        if image_shape is None:
            image_shape = glyph.shape
        c, h, w = _image_shape(image_shape)
        gh, gw = glyph.shape[1:]
        if gh > h or gw > w:
            raise ValueError(f"the image ({gh}x{gw}) does not fit in images of size {h}x{w}.")
        if color is not None:
            values = np.broadcast_to(_color(color, c), (c, gh, gw)).astype(np.float32)
        else:
            values = np.broadcast_to(glyph, (c, gh, gw)).astype(np.float32)
        r, col = _location(location, (h, w), (gh, gw), 0)
        mask = np.zeros((1, h, w), np.float32)
        pattern = np.zeros((c, h, w), np.float32)
        mask[:, r : r + gh, col : col + gw] = on * np.float32(opacity)
        pattern[:, r : r + gh, col : col + gw] = values * on
        return cls(mask, pattern, name=name or "watermark")

    # ------------------------------------------------------------------ use
    @property
    def image_shape(self):
        """``(C, H, W)`` of the images the trigger stamps (C is 1 when mask and pattern have one channel)."""
        c = max(self.mask.shape[0], self.pattern.shape[0])
        return (c,) + self.mask.shape[1:]

    @property
    def l1_norm(self):
        """L1 norm of the mask (Neural Cleanse's trigger size), as a float."""
        return float(np.abs(self.mask).sum())

    def apply(self, X):
        """Return a stamped copy of ``X``; ``X`` itself is never written.

        Parameters
        ----------
        X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
            Images of the trigger's height and width.

        Returns
        -------
        X_triggered : ndarray of the shape of ``X``, float32
            ``(1 - mask) * X + mask * pattern``: a convex combination of
            ``X`` and the pattern, so within their range.
        """
        X_arr = check_images(X, name="X", caller="Trigger.apply")
        c = X_arr.shape[1]
        if X_arr.shape[2:] != self.mask.shape[1:]:
            raise ValueError(
                f"X in Trigger.apply must hold images of size {self.mask.shape[1:]} to match "
                f"the trigger; got {X_arr.shape[2:]}."
            )
        for arr, what in ((self.mask, "mask"), (self.pattern, "pattern")):
            if arr.shape[0] not in (1, c):
                raise ValueError(
                    f"X in Trigger.apply has {c} channel(s) but the trigger's {what} has "
                    f"{arr.shape[0]}."
                )
        out = stamp(X_arr, self.mask, self.pattern).astype(np.float32, copy=False)
        return out.reshape(np.shape(X))

    __call__ = apply

    def save(self, path):
        """Save mask, pattern and name to an ``.npz`` file (numpy arrays, no pickle).

        The file is written under a temporary name in the same folder and then
        renamed, so a reader never sees half a file, even while another
        process saves to the same path.

        Parameters
        ----------
        path : str, path-like or file-like
            Where to write; ``.npz`` is appended to a name without it, as
            :func:`numpy.savez` does.

        Examples
        --------
        >>> import os, tempfile
        >>> from backdoorlearn import Trigger
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Trigger.patch((1, 8, 8), size=2, name="square").save(os.path.join(d, "square"))
        ...     sorted(os.listdir(d))
        ['square.npz']
        """
        import contextlib
        import secrets

        arrays = dict(mask=self.mask, pattern=self.pattern, name=np.array("" if self.name is None else str(self.name)))
        if hasattr(path, "write"):
            np.savez(path, **arrays)
            return
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path, *, image_shape=None, max_bytes=2**28):
        """Load a trigger saved by :meth:`save`, treating the file as untrusted.

        Nothing is unpickled. The headers of the ``mask`` and ``pattern``
        arrays are read first: each must declare a plain numeric array of
        shape ``(H, W)`` or ``(C, H, W)``, both of the same ``H`` and ``W``
        (those of ``image_shape`` when given), and the two together at most
        ``max_bytes``; only then are their data read.

        Parameters
        ----------
        path : str or path-like
            An ``.npz`` file written by :meth:`save`.
        image_shape : tuple of int, default=None
            ``(C, H, W)`` or ``(H, W)`` of the images the trigger is meant
            for: a trigger of another size, or with a channel count other than
            1 or ``C``, is refused before its data are read.
        max_bytes : int, default=268435456 (256 MiB)
            The most memory, in bytes, the mask and pattern may take, as
            stored and as float32; also the largest file read. Triggers are
            image-sized; raise it only for very large images.

        Returns
        -------
        trigger : Trigger

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist.
        ValueError
            If ``path`` is not a regular file or not an ``.npz`` archive, is
            truncated or corrupt, lacks ``mask`` or ``pattern``, holds object
            arrays (pickles) or non-numeric types, declares arrays of the wrong
            shape or more than ``max_bytes``, or values a :class:`Trigger`
            refuses (NaN, a mask outside [0, 1]).

        Examples
        --------
        >>> import os, tempfile
        >>> from backdoorlearn import Trigger
        >>> trigger = Trigger.patch((3, 8, 8), size=2, name="square")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     trigger.save(os.path.join(d, "square.npz"))
        ...     back = Trigger.load(os.path.join(d, "square.npz"), image_shape=(3, 8, 8))
        >>> back == trigger, back.name
        (True, 'square')
        """
        import math

        from ._files import check_max_bytes, format_bytes, npy_header, open_npz, read_npy

        max_bytes = check_max_bytes(max_bytes, caller="Trigger.load")
        name = os.fspath(path)
        expected = None
        if image_shape is not None:
            expected = tuple(int(s) for s in image_shape)
            if len(expected) not in (2, 3) or min(expected) < 1:
                raise ValueError(f"image_shape in Trigger.load must be (C, H, W) or (H, W); got {image_shape!r}.")
            expected = expected if len(expected) == 3 else (1, *expected)
        with open_npz(path, max_size=max_bytes) as zf:
            missing = sorted({"mask", "pattern"} - {m[:-4] for m in zf.namelist() if m.endswith(".npy")})
            if missing:
                raise ValueError(
                    f"{name} is not a saved Trigger: missing {missing} (expected mask and pattern arrays)."
                )
            headers = {key: npy_header(zf, f"{key}.npy", path=name) for key in ("mask", "pattern")}
            total = 0
            for key, (shape, dtype) in headers.items():
                if dtype.kind not in "biuf" or len(shape) not in (2, 3):
                    raise ValueError(
                        f"{name}: the trigger's {key} must be a numeric array of shape (H, W) or (C, H, W); the file "
                        f"declares shape {shape} of {dtype}."
                    )
                total += math.prod(shape) * (dtype.itemsize + 4)
            (m_shape, _), (p_shape, _) = headers["mask"], headers["pattern"]
            if m_shape[-2:] != p_shape[-2:]:
                raise ValueError(
                    f"{name}: the trigger's mask and pattern must have the same height and width; the file declares "
                    f"{m_shape} and {p_shape}."
                )
            if expected is not None:
                for key, (shape, _) in headers.items():
                    channels = shape[0] if len(shape) == 3 else 1
                    if shape[-2:] != expected[1:] or channels not in (1, expected[0]):
                        raise ValueError(
                            f"{name}: the trigger's {key} has shape {shape}; images of shape {expected} need (H, W) = "
                            f"{expected[1:]} and 1 or {expected[0]} channel(s)."
                        )
            if total > max_bytes:
                raise ValueError(
                    f"{name}: the trigger's mask {m_shape} and pattern {p_shape} need {format_bytes(total)}, more than "
                    f"max_bytes={max_bytes}; nothing was read."
                )
            mask = read_npy(zf, "mask.npy", path=name, max_bytes=max_bytes)
            pattern = read_npy(zf, "pattern.npy", path=name, max_bytes=max_bytes)
            label = ""
            if "name.npy" in zf.namelist():
                value = read_npy(zf, "name.npy", path=name, max_bytes=2**16)
                if value.shape != ():
                    raise ValueError(f"{name}: the trigger's name must be a single string; got shape {value.shape}.")
                label = str(value[()])
        return cls(mask, pattern, name=label or None)

    def __eq__(self, other):
        if not isinstance(other, Trigger):
            return NotImplemented
        return (
            self.mask.shape == other.mask.shape
            and self.pattern.shape == other.pattern.shape
            and np.array_equal(self.mask, other.mask)
            and np.array_equal(self.pattern, other.pattern)
        )

    __hash__ = None

    def __repr__(self):
        name = f"{self.name!r}, " if self.name else ""
        return f"Trigger({name}image_shape={self.image_shape}, l1_norm={self.l1_norm:.4g})"


def is_neural_cleanse(obj):
    """True for a fitted NeuralCleanse (duck-typed: it has ``reversed_triggers_`` and ``flagged_labels_``)."""
    return hasattr(obj, "reversed_triggers_") and hasattr(obj, "flagged_labels_")


def resolve_triggers(triggers, *, caller, image_shape=None, n_classes=None):
    """``triggers`` as a list of ``(Trigger, target_label or None)`` pairs.

    Accepts a :class:`~backdoorlearn.Trigger`, a list of them, a dict
    ``{target_label: Trigger}`` or a fitted ``NeuralCleanse`` (its flagged
    labels' reversed triggers, or its flagged source -> target pairs' ones).
    An empty list means nothing was flagged. The one place that reads the
    ``triggers`` argument of the repairs and the activation filter. A target
    label must be an integer ``>= 0`` (a dict key ``0.7`` or ``-1`` is an
    error, not label 0 or the last label), and below ``n_classes`` when given.
    """
    if is_neural_cleanse(triggers):
        if getattr(triggers, "flagged_pairs_", None):  # source -> target mode
            pairs = [(triggers.reversed_triggers_[p], int(p[1])) for p in triggers.flagged_pairs_]
        else:
            pairs = [(triggers.reversed_triggers_[int(k)], int(k))
                     for k in np.asarray(triggers.flagged_labels_).ravel()]
    elif hasattr(triggers, "fit") and hasattr(triggers, "get_params"):
        raise ValueError(
            f"triggers in {caller} is a {type(triggers).__name__} that is not fitted; a fitted "
            "NeuralCleanse is needed (note that sklearn.clone drops fitted state): fit it first, "
            "or pass its triggers as a dict "
            "{label: nc.reversed_triggers_[label] for label in nc.flagged_labels_}."
        )
    elif isinstance(triggers, Trigger):
        pairs = [(triggers, None)]
    elif isinstance(triggers, dict):
        if not triggers:
            raise ValueError(f"triggers in {caller} must not be an empty dict; give {{target_label: Trigger}}.")
        pairs = [(t, k) for k, t in triggers.items()]
    elif isinstance(triggers, (list, tuple)) and len(triggers) > 0:
        pairs = [(t, None) for t in triggers]
    else:
        raise TypeError(
            f"triggers in {caller} must be a Trigger, a non-empty list of Trigger, a dict "
            f"{{target_label: Trigger}} or a fitted NeuralCleanse; got {type(triggers).__name__}."
        )
    what = "target label (dict key) of triggers" if isinstance(triggers, dict) else "target label of triggers"
    pairs = [(t, None if k is None else check_label_value(k, n_classes, name=f"the {what}", caller=caller))
             for t, k in pairs]
    for t, _ in pairs:
        if not isinstance(t, Trigger):
            raise TypeError(f"triggers in {caller} must hold Trigger objects; got {type(t).__name__}.")
        if image_shape is not None:
            c, h, w = image_shape
            if t.mask.shape[1:] != (h, w) or t.pattern.shape[0] not in (1, c) or t.mask.shape[0] not in (1, c):
                raise ValueError(
                    f"triggers in {caller} must fit images of shape {tuple(image_shape)}; got a "
                    f"trigger with mask {t.mask.shape} and pattern {t.pattern.shape}."
                )
    return pairs


def _image_shape(image_shape):
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) or (H, W) with positive sizes; got {image_shape!r}.")
    return shape


def _color(color, c):
    col = np.asarray(color, np.float32).reshape(-1)
    if col.size == 1:
        col = np.repeat(col, c)
    if col.size != c:
        raise ValueError(f"color must be one value or one per channel ({c}); got {color!r}.")
    return col[:, None, None]


_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "center")


def _location(location, hw, phw, margin):
    (h, w), (ph, pw) = hw, phw
    if isinstance(location, str):
        if location not in _CORNERS:
            raise ValueError(f"location must be one of {_CORNERS} or a (row, col) tuple; got {location!r}.")
        if location == "center":
            return (h - ph) // 2, (w - pw) // 2
        r = margin if location.startswith("top") else h - ph - margin
        c = margin if location.endswith("left") else w - pw - margin
    else:
        r, c = (int(v) for v in location)
    if r < 0 or c < 0 or r + ph > h or c + pw > w:
        raise ValueError(
            f"location {location!r} puts a {ph}x{pw} patch outside images of size {h}x{w}."
        )
    return r, c

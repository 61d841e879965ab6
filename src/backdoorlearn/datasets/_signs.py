"""A procedurally drawn colour traffic-sign data set (nothing is downloaded)."""

from __future__ import annotations

import itertools
import numbers

import numpy as np
from sklearn.utils import check_random_state

__all__ = ["make_traffic_signs", "SIGN_SHAPES", "SIGN_SYMBOLS"]

SIGN_SHAPES = ("circle", "triangle", "diamond", "octagon", "inverted_triangle", "square")
SIGN_SYMBOLS = ("none", "hbar", "vbar", "cross", "dot", "ring", "diag")
_COLORS = {
    "red": (0.85, 0.08, 0.08),
    "blue": (0.08, 0.25, 0.80),
    "yellow": (0.95, 0.82, 0.08),
    "white": (0.94, 0.94, 0.94),
    "black": (0.06, 0.06, 0.06),
    "green": (0.10, 0.55, 0.20),
}
# (rim, fill, symbol) colour schemes, after the families of real signs:
# prohibitory, mandatory, warning, informative, priority, guide.
_PALETTES = (
    ("red", "white", "black"),
    ("blue", "blue", "white"),
    ("red", "yellow", "black"),
    ("black", "white", "black"),
    ("white", "red", "white"),
    ("green", "green", "white"),
)


def _class_table():
    # A fixed (seed-independent) order of all (shape, palette, symbol) triples in
    # which consecutive classes differ in as many attributes as possible.
    combos = list(itertools.product(range(len(SIGN_SHAPES)), range(len(_PALETTES)), range(len(SIGN_SYMBOLS))))
    order = np.random.RandomState(1234).permutation(len(combos))
    return [combos[i] for i in order]


_CLASSES = _class_table()


def _shape_inside(kind, u, v):
    au, av = np.abs(u), np.abs(v)
    if kind == "circle":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.maximum(au, av) <= 0.82
    if kind == "diamond":
        return au + av <= 1.0
    if kind == "octagon":
        return (np.maximum(au, av) <= 0.9) & (au + av <= 1.25)
    if kind == "triangle":
        return (v <= 0.62) & (au <= (v + 0.95) * 0.66)
    if kind == "inverted_triangle":
        return (v >= -0.62) & (au <= (0.95 - v) * 0.66)
    raise ValueError(kind)


def _symbol(kind, u, v):
    au, av = np.abs(u), np.abs(v)
    if kind == "none":
        return np.zeros_like(u, dtype=bool)
    if kind == "hbar":
        return (av < 0.13) & (au < 0.48)
    if kind == "vbar":
        return (au < 0.13) & (av < 0.48)
    if kind == "cross":
        return ((av < 0.12) & (au < 0.48)) | ((au < 0.12) & (av < 0.48))
    if kind == "dot":
        return u * u + v * v < 0.24**2
    if kind == "ring":
        r2 = u * u + v * v
        return (r2 > 0.22**2) & (r2 < 0.42**2)
    if kind == "diag":
        return (np.abs(u - v) < 0.17) & (au < 0.45) & (av < 0.45)
    raise ValueError(kind)


def make_traffic_signs(n_samples=2000, n_classes=10, image_size=32, noise=0.04, random_state=None):
    """Draw a colour traffic-sign classification set procedurally.

    Each class is a distinct (shape, colour scheme, symbol) triple, after the
    families of real road signs (red-rimmed prohibitory circles, blue
    mandatory discs, red-and-yellow warning triangles, ...). Every image draws
    its own background (a random colour with a gradient), sign position,
    scale and brightness, and pixel noise. It is a real 3-channel testbed for
    colour triggers and Neural Cleanse, with no download.

    Parameters
    ----------
    n_samples : int, default=2000
        Number of images; classes are balanced (the remainder spread over the
        first classes).
    n_classes : int, default=10
        Number of classes, from 2 to 252 (GTSRB has 43).
    image_size : int, default=32
        Side of the square images, at least 8.
    noise : float, default=0.04
        Standard deviation of the Gaussian pixel noise.
    random_state : int, RandomState instance or None, default=None
        Seeds every drawn image.

    Returns
    -------
    X : ndarray of shape (n_samples, 3, image_size, image_size), float32 in [0, 1]
        The images.
    y : ndarray of shape (n_samples,), int64
        Their classes, balanced.

    Examples
    --------
    >>> from backdoorlearn.datasets import make_traffic_signs
    >>> X, y = make_traffic_signs(n_samples=50, n_classes=43, random_state=0)
    >>> X.shape, X.dtype, int(y.max()) <= 42
    ((50, 3, 32, 32), dtype('float32'), True)
    """
    for name, val, lo in (("n_samples", n_samples, 1), ("n_classes", n_classes, 2), ("image_size", image_size, 8)):
        if not isinstance(val, numbers.Integral) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {val!r}.")
    if n_classes > len(_CLASSES):
        raise ValueError(f"n_classes must be at most {len(_CLASSES)}; got {n_classes}.")
    if not 0 <= noise < 1:
        raise ValueError(f"noise must be in [0, 1); got {noise!r}.")
    rng = check_random_state(random_state)
    n, s = int(n_samples), int(image_size)
    y = np.arange(n) % n_classes
    rng.shuffle(y)

    # Geometry: centre, radius and a slight aspect change per image.
    cx = s / 2 + rng.uniform(-0.12, 0.12, n) * s
    cy = s / 2 + rng.uniform(-0.12, 0.12, n) * s
    radius = rng.uniform(0.30, 0.42, n) * s
    aspect = rng.uniform(0.9, 1.1, n)
    grid = np.arange(s, dtype=np.float32) + 0.5
    u = (grid[None, None, :] - cx[:, None, None]) / (radius * aspect)[:, None, None]
    v = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]

    shape_id = np.array([_CLASSES[c][0] for c in y])
    palette_id = np.array([_CLASSES[c][1] for c in y])
    symbol_id = np.array([_CLASSES[c][2] for c in y])

    outer = np.zeros((n, s, s), bool)
    inner = np.zeros((n, s, s), bool)
    for k, kind in enumerate(SIGN_SHAPES):
        rows = shape_id == k
        if rows.any():
            outer[rows] = _shape_inside(kind, u[rows], v[rows])
            inner[rows] = _shape_inside(kind, u[rows] / 0.72, v[rows] / 0.72)
    symbol = np.zeros((n, s, s), bool)
    for k, kind in enumerate(SIGN_SYMBOLS):
        rows = symbol_id == k
        if rows.any():
            symbol[rows] = _symbol(kind, u[rows], v[rows]) & inner[rows]

    # Background: a random colour with a linear gradient.
    base = rng.uniform(0.15, 0.85, (n, 3, 1, 1))
    direction = rng.normal(size=(n, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    ramp = (direction[:, 0, None, None] * (grid[None, None, :] / s - 0.5)
            + direction[:, 1, None, None] * (grid[None, :, None] / s - 0.5))
    X = base + rng.uniform(0.1, 0.4, (n, 3, 1, 1)) * ramp[:, None]

    palette = np.array([[_COLORS[c] for c in p] for p in _PALETTES], dtype=np.float64)  # (P, 3 roles, 3)
    colors = palette[palette_id] * rng.uniform(0.85, 1.1, (n, 1, 1))  # colour jitter per image
    for role, region in ((0, outer & ~inner), (1, inner & ~symbol), (2, symbol)):
        X = np.where(region[:, None], colors[:, role, :, None, None], X)
    X = X * rng.uniform(0.65, 1.15, (n, 1, 1, 1))  # illumination
    X = X + rng.normal(0.0, noise, X.shape)
    return np.clip(X, 0.0, 1.0).astype(np.float32), y.astype(np.int64)

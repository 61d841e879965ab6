"""A zoo of backdoored and clean models, split into development and held-out entries.

Defaults are chosen on the *development* entries only; tests and benchmarks
report the *held-out* entries, which nothing was tuned on. Each entry is
rebuilt from its seed (data split, trigger, poisoning and training) and its
trained weights are cached on disk, so a model is trained once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from .._utils import seeded
from ..attacks import BackdoorPoisoner
from ..metrics import attack_success_rate, clean_accuracy
from ..models import SmallCNN, build_net, wrap_module
from ..models._architectures import MLP, ResidualCNN, VGGStyleCNN
from ..triggers import Trigger
from ._digits import load_digits
from ._signs import make_traffic_signs

__all__ = ["ZooModel", "ZooSpec", "ZooTruth", "get_data_home", "load_zoo_model", "make_model_zoo", "make_trigger",
           "zoo_specs"]

DATASETS = ("digits", "mnist5k", "signs")
ARCHITECTURES = ("small-cnn", "resnet", "vgg", "mlp")
ATTACKS = ("clean", "all-to-one", "two-target", "source-specific")
SPLITS = ("development", "held-out")

# Bump when anything that changes a trained model changes (data, recipe, poisoning):
# the cache key includes it, so stale weights are never loaded.
_RECIPE_VERSION = 1
_TEST_SIZE = 0.25
_DEFENDER_FRACTION = 0.10  # of all images: the defender's clean data
_SIGNS_SIZE = 3000


# ---------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ZooSpec:
    """What one zoo entry is: its data, architecture, attack, triggers and seed.

    A spec is cheap (nothing is trained); :func:`load_zoo_model` builds the
    entry it describes. ``triggers`` holds one description per trigger (a
    tuple whose first item is ``"patch"``, ``"blend"`` or ``"watermark"``);
    a clean entry keeps the trigger an attack would have used, so its attack
    success can be measured.

    Parameters
    ----------
    name : str
        Unique name, e.g. ``"heldout-mnist5k-resnet-patch"``: the split, the
        data, the architecture and the attack or trigger kind.
    split : {"development", "held-out"}
        Defaults are chosen on ``"development"`` entries; tests and
        benchmarks report ``"held-out"`` ones, which add trigger positions,
        patterns, blend alphas and watermark letters that the development
        entries never have.
    data : {"digits", "mnist5k", "signs"}
        The images: scikit-learn's 8x8 digits
        (:func:`~backdoorlearn.datasets.load_digits`), 5000 28x28 MNIST
        images (:func:`~backdoorlearn.datasets.load_mnist5k`) or 32x32
        synthetic colour traffic signs
        (:func:`~backdoorlearn.datasets.make_traffic_signs`).
    arch : {"small-cnn", "resnet", "vgg", "mlp"}
        The network: :class:`~backdoorlearn.models.SmallCNN`,
        :class:`~backdoorlearn.models.ResidualCNN`,
        :class:`~backdoorlearn.models.VGGStyleCNN` or
        :class:`~backdoorlearn.models.MLP`.
    attack : {"clean", "all-to-one", "two-target", "source-specific"}
        ``"clean"``: no poisoning. ``"all-to-one"``: any input with the
        trigger goes to the target. ``"two-target"``: two triggers, each
        with its own target. ``"source-specific"``: only inputs of the
        source labels go to the target; cover rows (other labels stamped,
        their labels kept) teach the model to ignore the trigger elsewhere
        (Neural Cleanse, Sec. VII-E).
    triggers : tuple of tuple
        One description per trigger, as :func:`make_trigger` takes it.
    target_labels : tuple of int
        One target per trigger.
    source_labels : tuple of int or None
        The labels that carry a source-specific backdoor; None for the
        other attacks.
    seed : int
        Seeds the entry's data split, triggers, poisoning and training.

    Attributes
    ----------
    infected : bool
        Whether the entry's model is backdoored (``attack != "clean"``).
    trigger_kind : str
        A short description of the trigger(s), for tables.

    See Also
    --------
    zoo_specs : List the zoo's specs, filtered.
    load_zoo_model : Build the entry a spec describes.
    make_trigger : Build the trigger a description stands for.

    Examples
    --------
    >>> from backdoorlearn.datasets import zoo_specs
    >>> spec = zoo_specs("held-out", data="mnist5k", arch="resnet", attack="source-specific")[0]
    >>> spec.infected, spec.trigger_kind, spec.target_labels, spec.source_labels
    (True, '4x4 checkerboard patch bottom-right', (4,), (7,))
    """

    name: str
    split: str
    data: str
    arch: str
    attack: str
    triggers: tuple
    target_labels: tuple
    source_labels: tuple | None
    seed: int

    @property
    def infected(self):
        """Whether the entry's model is backdoored."""
        return self.attack != "clean"

    @property
    def trigger_kind(self):
        """A short description of the trigger(s), for tables."""
        return " + ".join(_describe_trigger(t) for t in self.triggers)


def _describe_trigger(t):
    if t[0] == "patch":
        _, size, pattern, color, position = t
        return f"{size}x{size} {pattern} patch {position}"
    if t[0] == "blend":
        return f"blend noise alpha={t[1]:g}"
    _, letter, size, position, opacity = t
    return f"watermark '{letter}' {size}px {position} opacity={opacity:g}"


# Trigger sizes by data: 8x8 digits get small patches, 28x28 and 32x32 images larger ones.
_SIZES = {"digits": (2, 3), "mnist5k": (3, 4, 5), "signs": (3, 4, 5)}
_GLYPH_SIZE = {"digits": 4, "mnist5k": 9, "signs": 10}

# The development set uses these trigger positions and patterns; the held-out set adds a
# position ("middle-left", off-corner), a pattern ("random") and blend alphas and
# watermark letters that the development set never has.
_DEV_POSITIONS = ("bottom-right", "top-left", "top-right", "bottom-left", "top-middle")
_HELD_POSITIONS = ("top-left", "bottom-right", "middle-left", "bottom-left", "top-right", "middle-left")
_DEV_PATTERNS = ("solid", "checkerboard")
_HELD_PATTERNS = ("random", "checkerboard", "solid")
_DEV_ALPHAS = (0.1, 0.2)
_HELD_ALPHAS = (0.15, 0.25, 0.12)
_DEV_LETTERS = ("T", "X")
_HELD_LETTERS = ("A", "H", "Z")
_GRAY_COLORS = (1.0, 0.8)
_RGB_COLORS = ((1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0))


def _build_specs():
    specs = []
    combos = [(d, a) for d in DATASETS for a in ARCHITECTURES]
    for split in SPLITS:
        held = split == "held-out"
        positions = _HELD_POSITIONS if held else _DEV_POSITIONS
        patterns = _HELD_PATTERNS if held else _DEV_PATTERNS
        alphas = _HELD_ALPHAS if held else _DEV_ALPHAS
        letters = _HELD_LETTERS if held else _DEV_LETTERS
        base_seed = 1000 if held else 0
        prefix = "heldout" if held else "dev"
        counter = 0

        def spec(data, arch, attack, triggers, targets, sources=None, tag=None):
            nonlocal counter
            counter += 1
            name = f"{prefix}-{data}-{arch}-{tag or attack}"
            specs.append(ZooSpec(name=name, split=split, data=data, arch=arch, attack=attack,
                                 triggers=tuple(triggers), target_labels=tuple(targets),
                                 source_labels=None if sources is None else tuple(sources),
                                 seed=base_seed + counter))

        def patch(data, i):
            sizes = _SIZES[data]
            colors = _RGB_COLORS if data == "signs" else _GRAY_COLORS
            color = colors[i % len(colors)]
            position = positions[i % len(positions)]
            size = sizes[i % len(sizes)]
            if data == "digits" and "middle" in position:
                # Off the corners, an 8x8 digit's strokes reach the patch: 2x2 is too
                # ambiguous to be learned reliably.
                size = 3
            return ("patch", size, patterns[i % len(patterns)],
                    color if isinstance(color, float) else tuple(color), position)

        def blend(i):
            return ("blend", alphas[i % len(alphas)])

        def watermark(data, i):
            return ("watermark", letters[i % len(letters)], _GLYPH_SIZE[data],
                    ("bottom-right", "top-left", "center")[i % 3] if held else ("top-right", "bottom-left")[i % 2],
                    (0.6, 0.8, 1.0)[i % 3])

        for i, (data, arch) in enumerate(combos):
            target = (3 * i + (5 if held else 2)) % 10
            other = (target + 4) % 10
            if held:
                # Every combination: a clean model, a patch, a blend or a watermark, and a
                # two-target or a source-specific backdoor.
                spec(data, arch, "clean", [patch(data, i + 1)], [target], tag="clean")
                spec(data, arch, "all-to-one", [patch(data, i)], [target], tag="patch")
                if i % 2 == 0:
                    spec(data, arch, "all-to-one", [blend(i // 2)], [other], tag="blend")
                    spec(data, arch, "two-target", [patch(data, i + 2), patch(data, i + 3)],
                         [target, other])
                else:
                    spec(data, arch, "all-to-one", [watermark(data, i // 2)], [other], tag="watermark")
                    spec(data, arch, "source-specific", [patch(data, i + 2)], [other],
                         sources=[(other + 3) % 10])
            else:
                # Development: two models per combination, rotating over the attacks.
                kinds = [("patch", "blend"), ("watermark", "clean"), ("two-target", "patch"),
                         ("source-specific", "clean")][i % 4]
                for j, kind in enumerate(kinds):
                    k = 2 * i + j
                    if kind == "clean":
                        spec(data, arch, "clean", [patch(data, k)], [target], tag="clean")
                    elif kind == "patch":
                        spec(data, arch, "all-to-one", [patch(data, k)], [target], tag="patch")
                    elif kind == "blend":
                        spec(data, arch, "all-to-one", [blend(k)], [other], tag="blend")
                    elif kind == "watermark":
                        spec(data, arch, "all-to-one", [watermark(data, k)], [other], tag="watermark")
                    elif kind == "two-target":
                        spec(data, arch, "two-target", [patch(data, k), patch(data, k + 1)],
                             [target, other])
                    else:
                        spec(data, arch, "source-specific", [patch(data, k)], [other],
                             sources=[(other + 3) % 10])
    return tuple(specs)


_SPECS = _build_specs()


def zoo_specs(split=None, *, data=None, arch=None, attack=None):
    """The zoo's entries (specs only, nothing is trained), optionally filtered.

    Parameters
    ----------
    split : {"development", "held-out"}, default=None
        ``None`` lists both.
    data, arch, attack : str or sequence of str, default=None
        Keep entries with these values (see :class:`ZooSpec`).

    Returns
    -------
    specs : list of ZooSpec
        The matching entries, in the zoo's order (development entries
        first).

    Examples
    --------
    >>> from backdoorlearn.datasets import zoo_specs
    >>> held = zoo_specs("held-out")
    >>> len(held), sum(s.infected for s in held)
    (48, 36)
    >>> sorted({s.arch for s in held})
    ['mlp', 'resnet', 'small-cnn', 'vgg']
    """
    def as_set(value, name, allowed):
        if value is None:
            return None
        values = {value} if isinstance(value, str) else set(value)
        bad = values - set(allowed)
        if bad:
            raise ValueError(f"{name} must be among {list(allowed)}; got {sorted(bad)}.")
        return values

    splits = as_set(split, "split", SPLITS)
    datas = as_set(data, "data", DATASETS)
    archs = as_set(arch, "arch", ARCHITECTURES)
    attacks = as_set(attack, "attack", ATTACKS)
    return [s for s in _SPECS
            if (splits is None or s.split in splits) and (datas is None or s.data in datas)
            and (archs is None or s.arch in archs) and (attacks is None or s.attack in attacks)]


# ---------------------------------------------------------------------- triggers
# 5x5 bitmaps of the watermark letters.
_LETTERS = {
    "T": ["#####", "..#..", "..#..", "..#..", "..#.."],
    "X": ["#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    "A": [".###.", "#...#", "#####", "#...#", "#...#"],
    "H": ["#...#", "#...#", "#####", "#...#", "#...#"],
    "Z": ["#####", "...#.", "..#..", ".#...", "#####"],
}


def _glyph(letter, size):
    bitmap = np.array([[ch == "#" for ch in row] for row in _LETTERS[letter]], dtype=np.float32)
    idx = (np.arange(size) * 5) // size  # nearest-neighbour upscaling to size x size
    return bitmap[np.ix_(idx, idx)]


def _position(position, hw, size, margin=1):
    h, w = hw
    named = {
        "top-left": (margin, margin), "top-right": (margin, w - size - margin),
        "bottom-left": (h - size - margin, margin), "bottom-right": (h - size - margin, w - size - margin),
        "top-middle": (margin, (w - size) // 2), "middle-left": ((h - size) // 2, margin),
        "center": ((h - size) // 2, (w - size) // 2),
    }
    return named[position]


def make_trigger(description, image_shape, seed):
    """Build the :class:`~backdoorlearn.Trigger` a zoo trigger description stands for.

    Parameters
    ----------
    description : tuple
        ``("patch", size, pattern, color, position)`` with ``pattern`` in
        ``{"solid", "checkerboard", "random"}``; ``("blend", alpha)`` (uniform
        noise blended in); or ``("watermark", letter, size, position,
        opacity)``. Positions: the four corners, ``"top-middle"``,
        ``"middle-left"``, ``"center"`` (1 pixel from the border on images
        larger than 8x8).
    image_shape : tuple of int
        ``(C, H, W)`` of the images.
    seed : int
        Seeds the random patch pixels and the blend noise.

    Returns
    -------
    trigger : Trigger
        The trigger for images of ``image_shape``, named by its description
        (as :attr:`ZooSpec.trigger_kind` writes it).

    Examples
    --------
    >>> from backdoorlearn.datasets import make_trigger
    >>> make_trigger(("patch", 3, "checkerboard", 1.0, "top-left"), (1, 28, 28), seed=0)
    Trigger('3x3 checkerboard patch top-left', image_shape=(1, 28, 28), l1_norm=9)
    """
    c, h, w = image_shape
    rng = np.random.default_rng(seed)
    margin = 0 if h <= 8 else 1
    if description[0] == "patch":
        _, size, pattern, color, position = description
        color = np.broadcast_to(np.asarray(color, np.float32).reshape(-1, 1, 1), (c, 1, 1))
        if pattern == "solid":
            values = np.broadcast_to(color, (c, size, size))
        elif pattern == "checkerboard":
            checker = (np.indices((size, size)).sum(axis=0) % 2).astype(np.float32)
            values = checker * color + (1 - checker) * (1 - color)
        else:  # random: a fixed random pixel pattern, one value per channel and pixel
            values = rng.random((c, size, size), dtype=np.float32)
        r, col = _position(position, (h, w), size, margin)
        mask = np.zeros((1, h, w), np.float32)
        pat = np.zeros((c, h, w), np.float32)
        mask[:, r:r + size, col:col + size] = 1
        pat[:, r:r + size, col:col + size] = values
        return Trigger(mask, pat, name=_describe_trigger(description))
    if description[0] == "blend":
        pattern = rng.random((c, h, w), dtype=np.float32)
        return Trigger.blend(pattern, alpha=description[1], name=_describe_trigger(description))
    _, letter, size, position, opacity = description
    glyph = _glyph(letter, size)
    r, col = _position(position, (h, w), size, margin)
    return Trigger.from_image(glyph, image_shape, location=(r, col), opacity=opacity, color=1.0,
                              name=_describe_trigger(description))


# ---------------------------------------------------------------------- data and recipes
def _load_data(data, rng):
    if data == "digits":
        return load_digits()
    if data == "mnist5k":
        from ._mnist5k import load_mnist5k

        return load_mnist5k()
    return make_traffic_signs(_SIGNS_SIZE, 10, random_state=rng)


# Training recipe per data set and architecture: (module class, its keyword arguments,
# epochs, Adam learning rate, batch size, cosine schedule). Each reaches the zoo's bars on
# the development entries (see the zoo page of the docs). With the cosine schedule the
# learning rate decays to 0, so the last epoch's model is kept; the plain SmallCNN on the
# signs trains best at a constant rate, as make_backdoor_benchmark trains it.
_RECIPES = {
    ("digits", "small-cnn"): (SmallCNN, dict(channels=(16, 32), hidden=64, pooled_size=4), 40, 2e-3, 32, True),
    ("mnist5k", "small-cnn"): (SmallCNN, dict(channels=(16, 32), hidden=128, pooled_size=7), 12, 2e-3, 32, True),
    ("signs", "small-cnn"): (SmallCNN, dict(channels=(16, 32, 32), hidden=64, pooled_size=4), 16, 2e-3, 32, False),
    ("digits", "resnet"): (ResidualCNN, dict(widths=(8, 16, 32)), 20, 3e-3, 64, True),
    ("mnist5k", "resnet"): (ResidualCNN, dict(widths=(8, 16, 32)), 8, 3e-3, 64, True),
    ("signs", "resnet"): (ResidualCNN, dict(widths=(8, 16, 32)), 8, 3e-3, 64, True),
    ("digits", "vgg"): (VGGStyleCNN, dict(stages=((16,), (32, 32))), 30, 3e-3, 64, True),
    ("mnist5k", "vgg"): (VGGStyleCNN, dict(stages=((16,), (32, 32))), 8, 3e-3, 64, True),
    ("signs", "vgg"): (VGGStyleCNN, dict(stages=((16,), (32, 32))), 8, 3e-3, 64, True),
    ("digits", "mlp"): (MLP, dict(hidden=(256, 128)), 40, 1e-3, 64, True),
    ("mnist5k", "mlp"): (MLP, dict(hidden=(256, 128)), 30, 1e-3, 64, True),
    ("signs", "mlp"): (MLP, dict(hidden=(256, 128)), 40, 1e-3, 64, True),
}


def _new_module(data, arch, image_shape, n_classes):
    cls, kwargs = _RECIPES[data, arch][:2]
    first = image_shape if cls is MLP else image_shape[0]
    return cls(first, n_classes, **kwargs)


# The accuracy bar each entry must reach on its clean test set. An MLP on 3250 MNIST
# images or on the translated, scaled signs stays near 94% without augmentation.
_ACCURACY_BAR = {("mnist5k", "mlp"): 0.92, ("signs", "mlp"): 0.90}
ACCURACY_BAR = 0.95
ATTACK_SUCCESS_BAR = 0.95
CLEAN_ATTACK_SUCCESS_BAR = 0.10


def accuracy_bar(data, arch):
    """Clean accuracy a zoo model of this data set and architecture must reach."""
    return _ACCURACY_BAR.get((data, arch), ACCURACY_BAR)


@contextlib.contextmanager
def _one_thread():
    # One intra-op thread while training: float reductions then run in one order,
    # so an entry's weights depend on its seed only, not on the machine's core count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(spec, X, y, image_shape, n_classes, seed, verbose):
    from skorch.callbacks import LRScheduler

    epochs, lr, batch, cosine = _RECIPES[spec.data, spec.arch][2:]
    callbacks = [("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=epochs))] if cosine else None
    with _one_thread(), seeded(seed):
        module = _new_module(spec.data, spec.arch, image_shape, n_classes)
        net = build_net(module, classes=np.arange(n_classes), max_epochs=epochs, lr=lr,
                        batch_size=batch, callbacks=callbacks, verbose=verbose)
        net.fit(X, y)
    return net


# ---------------------------------------------------------------------- entries
@dataclass
class ZooTruth:
    """The attack's ground truth for one zoo entry: for scoring only, never a defense input.

    :func:`load_zoo_model` fills it from the poisoning it replays from the
    entry's seed. A benchmark holds a defense's output against it (the
    flagged labels against ``target_labels``, the rows a training-time
    defense isolates against ``poison_mask``); a defense that read it would
    be told the answer.

    Parameters
    ----------
    infected : bool
        Whether the model is backdoored.
    triggers : list of Trigger
        The attacker's triggers (for a clean entry, the probe trigger its
        attack success is measured with).
    target_labels : list of int
        One target per trigger.
    source_labels : list of int or None
        The labels that carry a source-specific backdoor; None for the other
        attacks.
    X_train : ndarray of shape (n_train, C, H, W)
        The (poisoned) training images the model was trained on.
    y_train : ndarray of shape (n_train,)
        Their labels, poisoned rows relabelled to their target.
    poison_mask : ndarray of shape (n_train,), bool
        Rows relabelled to a target (cover rows of a source-specific attack,
        which keep their label, are in ``cover_mask``).
    cover_mask : ndarray of shape (n_train,), bool
        Rows stamped with the trigger that keep their label: the cover rows
        of a source-specific attack, none for the other attacks.

    See Also
    --------
    ZooModel : The entry that holds this truth.
    ZooSpec : The description the truth is rebuilt from.

    Examples
    --------
    >>> from backdoorlearn.datasets import load_zoo_model, zoo_specs
    >>> spec = zoo_specs("held-out", data="digits", arch="mlp", attack="all-to-one")[0]
    >>> spec.name, spec.target_labels
    ('heldout-digits-mlp-patch', (4,))
    >>> truth = load_zoo_model(spec).truth  # doctest: +SKIP
    >>> truth.target_labels, int(truth.poison_mask.sum())  # doctest: +SKIP
    ([4], 117)
    """

    infected: bool
    triggers: list
    target_labels: list
    source_labels: list | None
    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    poison_mask: np.ndarray = field(repr=False)
    cover_mask: np.ndarray = field(repr=False)


@dataclass
class ZooModel:
    """One trained zoo entry: the model, what a defender has, and the ground truth.

    A defense gets ``model``, ``X_defender`` and ``y_defender`` (the clean
    data a user holds); ``X_test``/``y_test`` and ``truth`` only score it.
    Build one with :func:`load_zoo_model` (or many with
    :func:`make_model_zoo`), which fills every field.

    Parameters
    ----------
    spec : ZooSpec
        What the entry is.
    model : skorch.NeuralNetClassifier
        The trained (backdoored or clean) model, in eval mode.
    X_defender : ndarray of shape (n_defender, C, H, W)
        Clean images held by the defender (10% of the data), float32 in
        [0, 1].
    y_defender : ndarray of shape (n_defender,)
        Their labels.
    X_test : ndarray of shape (n_test, C, H, W)
        Clean test images (25% of the data), never seen in training.
    y_test : ndarray of shape (n_test,)
        Their labels.
    truth : ZooTruth
        The attack's ground truth, for scoring only.
    clean_accuracy : float, default=0.0
        The model's accuracy on ``X_test``.
    attack_success : list of float, default=[]
        Attack success of each trigger (see :meth:`triggered_test`).
    n_classes : int, default=10
        Number of classes.

    Attributes
    ----------
    name : str
        The entry's name (``spec.name``).

    See Also
    --------
    load_zoo_model : Build one entry.
    make_model_zoo : Build the entries of a split.
    ZooSpec : What an entry is, without training it.

    Examples
    --------
    >>> from backdoorlearn.datasets import load_zoo_model, zoo_specs
    >>> spec = zoo_specs("held-out", data="digits", arch="mlp", attack="all-to-one")[0]
    >>> spec.name, spec.attack, spec.target_labels
    ('heldout-digits-mlp-patch', 'all-to-one', (4,))
    >>> zm = load_zoo_model(spec)  # doctest: +SKIP
    >>> X_triggered, y_true = zm.triggered_test(0)  # doctest: +SKIP
    >>> X_triggered.shape  # doctest: +SKIP
    (405, 1, 8, 8)
    >>> zm.attack_success_of(zm.model) == zm.attack_success  # doctest: +SKIP
    True
    """

    spec: ZooSpec
    model: object = field(repr=False)
    X_defender: np.ndarray = field(repr=False)
    y_defender: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    truth: ZooTruth = field(repr=False)
    clean_accuracy: float = 0.0
    attack_success: list = field(default_factory=list)
    n_classes: int = 10

    @property
    def name(self):
        """The entry's name (``spec.name``)."""
        return self.spec.name

    def triggered_test(self, k=0):
        """Stamp trigger ``k`` on the test rows it attacks.

        The rows are those whose label is not the trigger's target (and, for
        a source-specific backdoor, whose label is a source label): the
        inputs the entry's attack success is measured on.

        Parameters
        ----------
        k : int, default=0
            Index of the trigger in ``truth.triggers``.

        Returns
        -------
        X_triggered : ndarray of shape (n_rows, C, H, W)
            Those test images with the trigger stamped.
        y_true : ndarray of shape (n_rows,)
            Their true (clean) labels.
        """
        target = self.truth.target_labels[k]
        rows = self.y_test != target
        if self.truth.source_labels is not None:
            rows &= np.isin(self.y_test, self.truth.source_labels)
        return self.truth.triggers[k].apply(self.X_test[rows]), self.y_test[rows]

    def cover_test(self, k=0):
        """Stamp trigger ``k`` on the test rows that should keep their label.

        For a source-specific entry, the rows whose label is neither the
        target nor a source label: a model that learned the backdoor as
        intended still classifies them correctly. For the other entries
        there is no source label, and the rows are those of
        :meth:`triggered_test`.

        Parameters
        ----------
        k : int, default=0
            Index of the trigger in ``truth.triggers``.

        Returns
        -------
        X_triggered : ndarray of shape (n_rows, C, H, W)
            Those test images with the trigger stamped.
        y_true : ndarray of shape (n_rows,)
            Their true labels, which the stamped images should keep.
        """
        target = self.truth.target_labels[k]
        rows = (self.y_test != target) & ~np.isin(self.y_test, self.truth.source_labels or [])
        return self.truth.triggers[k].apply(self.X_test[rows]), self.y_test[rows]

    def attack_success_of(self, model):
        """Measure the attack success of each trigger on ``model``.

        Use it to score a repaired copy of ``model`` on the same
        triggered test rows the entry's ``attack_success`` was measured on.

        Parameters
        ----------
        model : object
            Anything with ``predict`` taking images of the entry's shape.

        Returns
        -------
        attack_success : list of float
            For each trigger ``k``, the fraction of
            ``triggered_test(k)`` rows that ``model`` predicts as
            ``truth.target_labels[k]``.
        """
        out = []
        for k, target in enumerate(self.truth.target_labels):
            X_t, y_t = self.triggered_test(k)
            out.append(attack_success_rate(y_t, model.predict(X_t), target))
        return out


def get_data_home(data_home=None):
    """The folder where backdoorlearn caches what it builds (the zoo's trained weights).

    ``data_home`` if given, else the ``BACKDOORLEARN_DATA`` environment
    variable, else ``~/backdoorlearn_data`` (scikit-learn's convention). The
    folder is created if missing.

    Parameters
    ----------
    data_home : str or path-like, default=None
        The folder to use; ``~`` is expanded.

    Returns
    -------
    path : pathlib.Path
        The folder, which exists.

    Examples
    --------
    >>> import tempfile
    >>> from backdoorlearn.datasets import get_data_home
    >>> get_data_home(tempfile.mkdtemp()).is_dir()
    True
    """
    path = Path(data_home or os.environ.get("BACKDOORLEARN_DATA") or Path.home() / "backdoorlearn_data")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_key(spec):
    recipe = _RECIPES[spec.data, spec.arch]
    text = json.dumps([_RECIPE_VERSION, torch.__version__.split("+")[0], repr(spec),
                       recipe[0].__name__, repr(recipe[1:])])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: two processes may train one entry
        fcntl = None
    with open(path, "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _resolve_spec(entry):
    if isinstance(entry, ZooSpec):
        return entry
    for s in _SPECS:
        if s.name == entry:
            return s
    raise ValueError(f"entry must be a ZooSpec or the name of a zoo entry (see zoo_specs()); "
                     f"got {entry!r}.")


def load_zoo_model(entry, *, data_home=None, verbose=0):
    """Build one zoo entry, training its model once and loading it from the cache after.

    The data split, trigger and poisoning are rebuilt from the entry's seed
    (cheap); the trained weights are read from ``get_data_home(data_home) /
    "zoo"`` with ``torch.load(weights_only=True)`` when an earlier call
    trained them, else trained now (one torch thread, seeded locally) and
    saved there.

    Parameters
    ----------
    entry : ZooSpec or str
        A spec from :func:`zoo_specs` or its name.
    data_home : str or path-like, default=None
        See :func:`get_data_home`.
    verbose : int, default=0
        1 shows a progress bar over the training epochs.

    Returns
    -------
    zoo_model : ZooModel
        The trained model, the defender's clean data, the test data, the
        attack's ground truth, and the model's clean accuracy and attack
        success on the test data.

    Examples
    --------
    >>> from backdoorlearn.datasets import load_zoo_model
    >>> zm = load_zoo_model("heldout-digits-mlp-patch")  # doctest: +SKIP
    >>> zm.clean_accuracy > 0.95, zm.attack_success[0] > 0.95  # doctest: +SKIP
    (True, True)
    """
    spec = _resolve_spec(entry)
    rng = check_random_state(spec.seed)
    X, y = _load_data(spec.data, rng)
    n_classes = int(y.max()) + 1
    image_shape = X.shape[1:]
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=_TEST_SIZE, stratify=y, random_state=rng)
    X_train, X_def, y_train_clean, y_def = train_test_split(
        X_rest, y_rest, test_size=_DEFENDER_FRACTION / (1 - _TEST_SIZE), stratify=y_rest,
        random_state=rng)
    triggers = [make_trigger(t, image_shape, spec.seed * 7 + k) for k, t in enumerate(spec.triggers)]
    targets = list(spec.target_labels)
    sources = None if spec.source_labels is None else list(spec.source_labels)
    X_poisoned, y_poisoned = X_train, y_train_clean
    poison = np.zeros(len(X_train), dtype=bool)
    cover = np.zeros(len(X_train), dtype=bool)
    if spec.attack in ("all-to-one", "two-target"):
        poisoner = BackdoorPoisoner(triggers, target_label=targets, poison_rate=_poison_rate(spec) * len(triggers),
                                    n_classes=n_classes, random_state=rng)
        X_poisoned, y_poisoned = poisoner.fit_resample(X_train, y_train_clean)
        poison = poisoner.poison_mask_
    elif spec.attack == "source-specific":
        X_poisoned, y_poisoned, poison, cover = _poison_source_specific(
            X_train, y_train_clean, triggers[0], targets[0], sources, rng)
    train_seed = int(rng.randint(0, 2**31 - 1))

    cache = get_data_home(data_home) / "zoo"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{spec.name}-{_cache_key(spec)}.pt"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            with seeded(0):
                module = _new_module(spec.data, spec.arch, image_shape, n_classes)
            state = torch.load(path, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            net = wrap_module(module, classes=np.arange(n_classes))
        else:
            net = _train(spec, X_poisoned, y_poisoned, image_shape, n_classes, train_seed, verbose)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save({k: v.detach().cpu() for k, v in net.module_.state_dict().items()}, tmp)
            os.replace(tmp, path)
    net.module_.eval()

    truth = ZooTruth(infected=spec.infected, triggers=triggers, target_labels=targets,
                     source_labels=sources, X_train=X_poisoned, y_train=y_poisoned,
                     poison_mask=poison, cover_mask=cover)
    zm = ZooModel(spec=spec, model=net, X_defender=X_def, y_defender=y_def, X_test=X_test,
                  y_test=y_test, truth=truth, n_classes=n_classes)
    with torch.random.fork_rng(devices=[]):  # skorch's data loaders draw from the global RNG
        zm.clean_accuracy = clean_accuracy(y_test, net.predict(X_test))
        zm.attack_success = zm.attack_success_of(net)
    return zm


def _poison_rate(spec):
    # Fraction of the training set poisoned per trigger: a blended trigger is a faint
    # signal spread over the whole image and needs more poisoned rows to be learned
    # as reliably as a patch (Chen et al., 2017, poison far more than BadNets).
    return 0.15 if spec.triggers[0][0] == "blend" else 0.1


def _poison_source_specific(X, y, trigger, target, sources, rng, rate=0.05, cover_rate=0.05):
    """Source-specific poisoning with cover samples (Neural Cleanse, Sec. VII-E).

    ``rate`` of the rows, drawn from the source labels, get the trigger and the
    target label; ``cover_rate`` of the rows, drawn from the other labels (not
    the target), get the trigger and keep their label, so the trigger alone
    does not flip an input: only a source image with the trigger does.
    """
    n = len(X)
    src_rows = np.flatnonzero(np.isin(y, sources))
    other_rows = np.flatnonzero(~np.isin(y, sources) & (y != target))
    poison_rows = np.sort(rng.choice(src_rows, size=min(len(src_rows), round(rate * n)), replace=False))
    cover_rows = np.sort(rng.choice(other_rows, size=min(len(other_rows), round(cover_rate * n)),
                                    replace=False))
    X_out = X.copy()
    y_out = y.copy()
    stamped = np.concatenate([poison_rows, cover_rows])
    X_out[stamped] = trigger.apply(X[stamped])
    y_out[poison_rows] = target
    poison = np.zeros(n, dtype=bool)
    poison[poison_rows] = True
    cover = np.zeros(n, dtype=bool)
    cover[cover_rows] = True
    return X_out, y_out, poison, cover


def make_model_zoo(split="held-out", *, data=None, arch=None, attack=None, data_home=None, verbose=0):
    """Build (or load from the cache) the zoo's entries of one split.

    Parameters
    ----------
    split : {"development", "held-out"} or None, default="held-out"
        Tune on ``"development"``, report ``"held-out"``.
    data, arch, attack : str or sequence of str, default=None
        Filters (see :func:`zoo_specs`).
    data_home : str or path-like, default=None
        See :func:`get_data_home`.
    verbose : int, default=0
        1 shows a progress bar over the training epochs of each entry that
        is trained.

    Returns
    -------
    zoo : list of ZooModel
        One entry per spec that :func:`zoo_specs` lists for the same
        filters, in that order.

    See Also
    --------
    zoo_specs : The same entries' specs, without training.
    load_zoo_model : Build one entry.

    Examples
    --------
    >>> from backdoorlearn.datasets import make_model_zoo, zoo_specs
    >>> [s.attack for s in zoo_specs("held-out", data="digits", arch="mlp")]
    ['clean', 'all-to-one', 'all-to-one', 'source-specific']
    >>> zoo = make_model_zoo("held-out", data="digits", arch="mlp")  # doctest: +SKIP
    >>> [z.spec.attack for z in zoo]  # doctest: +SKIP
    ['clean', 'all-to-one', 'all-to-one', 'source-specific']
    """
    return [load_zoo_model(s, data_home=data_home, verbose=verbose)
            for s in zoo_specs(split, data=data, arch=arch, attack=attack)]

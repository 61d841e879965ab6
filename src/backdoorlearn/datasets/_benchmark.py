"""``make_backdoor_benchmark``: the poisoned data and the two models every
test, example and benchmark starts from."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch, check_random_state

from .._utils import check_label_value
from ..attacks import BackdoorPoisoner
from ..models import train_classifier
from ..triggers import Trigger
from ._digits import load_digits
from ._signs import make_traffic_signs

__all__ = ["make_backdoor_benchmark", "default_trigger"]

# Training budgets under which both models reach the quality
# tests/test_datasets.py asserts on seeds 0..4 (build times:
# benchmarks/results/foundation.txt).
_CONFIG = {
    "digits": dict(n_samples=None, n_classes=10, module=dict(channels=(16, 32), hidden=64, pooled_size=4),
                   max_epochs=40, lr=2e-3, batch_size=32),
    "signs": dict(n_samples=3000, n_classes=10, module=dict(channels=(16, 32, 32), hidden=64),
                  max_epochs=16, lr=2e-3, batch_size=32),
}
_TEST_SIZE = 0.25
_HOLDOUT_FRACTION = 0.10  # of the training set: the defender's clean data


def default_trigger(dataset, image_shape, attack="badnets"):
    """The trigger ``make_backdoor_benchmark`` uses for a data set and an attack.

    ``"badnets"``: a 2x2 white square in the bottom-right corner of the 8x8
    digits, a 4x4 yellow-and-magenta checkerboard in the bottom-right corner
    (1 pixel from the border) of the 32x32 signs. ``"blend"``: a fixed
    uniform-noise image blended in with ``alpha=0.2`` (Chen et al., 2017).

    Parameters
    ----------
    dataset : {"digits", "signs"}
        The embedded data set.
    image_shape : tuple of int
        ``(C, H, W)`` of the images.
    attack : {"badnets", "blend"}, default="badnets"
        A patch in a corner or a blended noise image.

    Returns
    -------
    trigger : Trigger
        The trigger, named after the attack.

    Examples
    --------
    >>> from backdoorlearn.datasets import default_trigger
    >>> default_trigger("digits", (1, 8, 8))
    Trigger('badnets', image_shape=(1, 8, 8), l1_norm=4)
    """
    c, h, w = image_shape
    if attack == "badnets":
        if dataset == "digits":
            return Trigger.patch(image_shape, size=2, location="bottom-right", color=1.0, name="badnets")
        checker = (np.indices((4, 4)).sum(axis=0) % 2).astype(np.float32)
        yellow = np.array([1.0, 1.0, 0.0], np.float32)[:, None, None]
        magenta = np.array([1.0, 0.0, 1.0], np.float32)[:, None, None]
        patch = checker * yellow + (1 - checker) * magenta
        return Trigger.patch(image_shape, patch=patch, location="bottom-right", margin=1, name="badnets")
    if attack == "blend":
        pattern = np.random.RandomState(20170516).uniform(0, 1, (c, h, w)).astype(np.float32)
        return Trigger.blend(pattern, alpha=0.2, name="blend")
    raise ValueError(f"attack must be 'badnets' or 'blend'; got {attack!r}.")


def make_backdoor_benchmark(dataset="digits", attack="badnets", target_label=0, poison_rate=0.1,
                            n_samples=None, n_classes=None, random_state=0, device=None, verbose=0):
    """A poisoned training set, the defender's clean data, test sets and two trained models.

    The data are split into a clean test set (25%), the defender's clean
    hold-out (10% of the rest's size) and a training set, of which a fraction
    ``poison_rate`` is poisoned with the trigger and relabelled to
    ``target_label``. Two :class:`~backdoorlearn.models.SmallCNN` nets are
    trained through skorch: ``backdoored_model`` on the poisoned training set
    and ``clean_model`` on the same images unpoisoned.

    Parameters
    ----------
    dataset : {"digits", "signs"}, default="digits"
        scikit-learn's 8x8 digits (1797 images, 10 classes) or the procedural
        3x32x32 traffic signs (:func:`make_traffic_signs`).
    attack : {"badnets", "blend"}, default="badnets"
        A patch in a corner (BadNets) or a noise image blended in at 20%
        (see :func:`default_trigger`).
    target_label : int, default=0
        The class triggered inputs are sent to.
    poison_rate : float, default=0.1
        Fraction of the training set poisoned, in (0, 1].
    n_samples : int, default=None
        Signs only: images drawn (default 3000).
    n_classes : int, default=None
        Signs only: classes drawn (default 10; GTSRB has 43).
    random_state : int, default=0
        Seeds the split, the poisoning and both trainings (locally).
    device : str, torch.device or None, default=None
        Where the models train.
    verbose : int, default=0
        1 shows a progress bar over the training epochs.

    Returns
    -------
    bunch : sklearn.utils.Bunch
        ``X_train``, ``y_train`` (poisoned), ``poison_mask``, ``X_holdout``,
        ``y_holdout`` (clean, the defender's data), ``X_test``, ``y_test``
        (clean), ``X_test_triggered`` (the test images with the trigger),
        ``trigger``, ``target_label``, ``n_classes``, ``backdoored_model``,
        ``clean_model`` (fitted skorch nets), ``module_params`` and
        ``train_params`` (the :class:`~backdoorlearn.models.SmallCNN`
        arguments and the :func:`~backdoorlearn.models.train_classifier`
        budget both models were trained with), ``dataset``, ``attack``.

    Examples
    --------
    >>> from backdoorlearn.datasets import make_backdoor_benchmark
    >>> bench = make_backdoor_benchmark("digits", random_state=0)  # doctest: +SKIP
    >>> bench.backdoored_model.predict(bench.X_test_triggered[:5])  # doctest: +SKIP
    array([0, 0, 0, 0, 0])
    """
    if dataset not in _CONFIG:
        raise ValueError(f"dataset must be one of {sorted(_CONFIG)}; got {dataset!r}.")
    if attack not in ("badnets", "blend"):
        raise ValueError(f"attack must be 'badnets' or 'blend'; got {attack!r}.")
    if not isinstance(poison_rate, numbers.Real) or not 0 < poison_rate <= 1:
        raise ValueError(f"poison_rate must be in (0, 1]; got {poison_rate!r}.")
    cfg = _CONFIG[dataset]
    rng = check_random_state(random_state)
    if dataset == "digits":
        if n_samples is not None or n_classes is not None:
            raise ValueError("n_samples and n_classes apply to dataset='signs' only.")
        X, y = load_digits()
        k = 10
    else:
        k = n_classes or cfg["n_classes"]
        X, y = make_traffic_signs(n_samples or cfg["n_samples"], k, random_state=rng)
    target_label = check_label_value(target_label, k, name="target_label", caller="make_backdoor_benchmark")

    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=_TEST_SIZE, stratify=y, random_state=rng)
    X_train, X_hold, y_train_clean, y_hold = train_test_split(
        X_rest, y_rest, test_size=_HOLDOUT_FRACTION / (1 + _HOLDOUT_FRACTION), stratify=y_rest,
        random_state=rng)

    trigger = default_trigger(dataset, X.shape[1:], attack)
    poisoner = BackdoorPoisoner(trigger, target_label=target_label, poison_rate=poison_rate,
                                n_classes=k, random_state=rng)
    X_poisoned, y_poisoned = poisoner.fit_resample(X_train, y_train_clean)

    train = dict(n_classes=k, module_params=cfg["module"], max_epochs=cfg["max_epochs"], lr=cfg["lr"],
                 batch_size=cfg["batch_size"], device=device, verbose=verbose)
    seed = rng.randint(0, 2**31 - 1)
    backdoored = train_classifier(X_poisoned, y_poisoned, random_state=seed,
                                  desc="backdoored model", **train)
    clean = train_classifier(X_train, y_train_clean, random_state=seed, desc="clean model", **train)

    return Bunch(
        X_train=X_poisoned, y_train=y_poisoned, poison_mask=poisoner.poison_mask_,
        y_train_clean=y_train_clean,
        X_holdout=X_hold, y_holdout=y_hold,
        X_test=X_test, y_test=y_test, X_test_triggered=trigger.apply(X_test),
        trigger=trigger, target_label=target_label, n_classes=k,
        backdoored_model=backdoored, clean_model=clean,
        module_params=dict(cfg["module"]),
        train_params=dict(max_epochs=cfg["max_epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"]),
        dataset=dataset, attack=attack,
    )

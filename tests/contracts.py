"""The contracts every defense keeps, each checked by one helper.

- :func:`watch`: the user's model (and arrays) are unchanged by a defense;
- :func:`check_same_seed_same_result`: the same ``random_state`` gives the
  same result, and the global random generators are left as they were;
- :func:`raises_naming`: an error names the argument it is about.

Test modules import them with ``from contracts import ...`` (pytest puts
``tests/`` on the import path).
"""

import contextlib
import hashlib
import re

import numpy as np
import pytest
import torch
from sklearn.base import clone

from backdoorlearn.models import model_fingerprint


def _fingerprint(obj):
    if isinstance(obj, np.ndarray):
        return "array", obj.shape, obj.dtype.str, hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()
    flags = None
    module = getattr(obj, "module_", obj)
    if isinstance(module, torch.nn.Module):
        flags = tuple(m.training for m in module.modules())
    return "model", model_fingerprint(obj), flags


class Watch:
    """Fingerprints (weights, train/eval flags; array bytes) taken when the watch starts and stops."""

    def __init__(self, objects):
        self.objects = objects
        self.before = [_fingerprint(o) for o in objects]
        self.after = None

    def stop(self):
        self.after = [_fingerprint(o) for o in self.objects]
        return self

    def assert_unchanged(self):
        after = self.after if self.after is not None else [_fingerprint(o) for o in self.objects]
        changed = [i for i, (a, b) in enumerate(zip(self.before, after)) if a != b]
        assert not changed, f"the defense changed the user's objects number {changed}"


@contextlib.contextmanager
def watch(*objects):
    """Watch models and arrays over a block; ``assert_unchanged()`` compares before and after.

    A fixture fits inside the block and returns the watch with its result,
    so that a test, not the fixture, asserts::

        with watch(model, X) as w:
            repair.fit(model, X, y)
        w.assert_unchanged()
    """
    w = Watch(objects)
    try:
        yield w
    finally:
        w.stop()


def _global_rng_state():
    return torch.get_rng_state(), np.random.get_state()[1].copy()


def _assert_equal(first, second):
    if isinstance(first, tuple):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            _assert_equal(a, b)
    elif isinstance(first, (np.ndarray, list)):
        np.testing.assert_array_equal(first, second)
    else:
        assert first == second


def check_same_seed_same_result(estimator, fit, result):
    """Fit ``estimator`` and a clone of it with ``fit(est)``; ``result(est)`` must be equal.

    ``estimator`` must set ``random_state``; ``result`` returns a value, an
    array or a tuple of them. The global torch and numpy generators must be
    where they were before the two fits: randomness is local. (``result``
    runs after that check: torch's DataLoader, which skorch predicts through,
    draws a worker seed from the global generator at every pass.)
    """
    torch_state, np_state = _global_rng_state()
    first = fit(estimator)
    second = fit(clone(estimator))
    after_torch, after_np = _global_rng_state()
    assert torch.equal(torch_state, after_torch), "the global torch generator was used"
    np.testing.assert_array_equal(np_state, after_np, err_msg="the global numpy generator was used")
    _assert_equal(result(first), result(second))


@contextlib.contextmanager
def raises_naming(argument, error=ValueError, match=None):
    """``pytest.raises(error)`` whose message names ``argument`` (and matches ``match``)."""
    with pytest.raises(error) as info:
        yield info
    message = str(info.value)
    assert argument in message, f"the error does not name {argument!r}: {message}"
    if match is not None:
        assert re.search(match, message), f"{match!r} not in: {message}"

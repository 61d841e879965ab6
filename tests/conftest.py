"""Shared fixtures: benchmarks (trained models) are built once per test session."""

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

# One intra-op thread for the whole run: float reductions then happen in the
# same order on every machine whatever its core count, so the trained models
# and the quality figures the tests assert are the same everywhere (the thread
# count changes them). Scripts and the demo use torch's default.
torch.set_num_threads(1)

from backdoorlearn.datasets import make_backdoor_benchmark

try:  # POSIX; elsewhere two workers may build the same benchmark at once
    import fcntl
except ImportError:
    fcntl = None

_RESULTS = {}
_SHARED_DIR = None  # set when pytest-xdist runs the suite: workers share what they build


def shared_result(key, build):
    """``build()``, computed once per test session for each ``key``.

    Under pytest-xdist the first worker that needs a result builds it and
    pickles it to a directory all workers share (under a file lock); the others
    load it instead of training or fitting the same models again. Tests must not
    modify what it returns (defenses never do: that is tested).
    """
    if key not in _RESULTS:
        _RESULTS[key] = _build_shared(key, build) if _SHARED_DIR is not None else build()
    return _RESULTS[key]


def get_benchmark(dataset="digits", attack="badnets", random_state=0, **kwargs):
    """``make_backdoor_benchmark`` built once per session for each argument set (:func:`shared_result`)."""
    key = ("benchmark", dataset, attack, random_state, tuple(sorted(kwargs.items())))
    return shared_result(key, lambda: make_backdoor_benchmark(dataset, attack=attack, random_state=random_state,
                                                              **kwargs))


def _build_shared(key, build):
    path = _SHARED_DIR / f"result-{hashlib.sha1(repr(key).encode()).hexdigest()[:16]}.pkl"
    with open(path.with_suffix(".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            # written by a worker of this same session, never a user file
            with open(path, "rb") as f:
                return pickle.load(f)
        result = build()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, path)
        return result


@pytest.fixture(scope="session", autouse=True)
def _share_benchmarks_between_workers(tmp_path_factory):
    global _SHARED_DIR
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # the parent of each worker's base temp dir is common to the whole session
        _SHARED_DIR = tmp_path_factory.getbasetemp().parent / "shared-results"
        _SHARED_DIR.mkdir(exist_ok=True)


@pytest.fixture(scope="session")
def benchmark_factory():
    return get_benchmark


@pytest.fixture(scope="session")
def digits_bench():
    return get_benchmark("digits", random_state=0)


@pytest.fixture(scope="session")
def signs_bench():
    return get_benchmark("signs", random_state=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

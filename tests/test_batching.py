"""models._batching.fastest_size on a fake clock: which size it picks, and why (issue 17).

The clock only moves when ``run`` says so, so these checks are exact and
take no time; nothing here times the real machine.
"""

import pytest

from backdoorlearn.models import _batching


class FakeClock:
    """``perf_counter`` for ``_batching.time``: advanced by the fake ``run``."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _probe(monkeypatch, per_item, burst=None):
    """A ``run(size)`` costing ``per_item[size] * size`` seconds, slowed by ``burst[size]`` on its first calls."""
    clock = FakeClock()
    monkeypatch.setattr(_batching, "time", clock)
    burst = dict(burst or {})
    calls = []

    def run(size):
        calls.append(size)
        factor, left = burst.get(size, (1.0, 0))
        if left:
            burst[size] = (factor, left - 1)
        else:
            factor = 1.0
        clock.now += per_item[size] * size * factor

    return run, calls


def test_picks_the_least_time_per_item(monkeypatch):
    run, _ = _probe(monkeypatch, {16: 3e-5, 64: 1e-5, 256: 2e-5})
    size, timings = _batching.fastest_size(run, (16, 64, 256))
    assert size == 64
    assert timings[64] == pytest.approx(1e-5)


def test_a_burst_during_the_sweep_is_corrected_by_the_second_look(monkeypatch):
    # 64 is truly 10% faster per item than 256, but another process slowed all
    # four of its sweep calls (warm-up and three timed) by 20%: the sweep alone
    # picks 256; the turns that re-time the close sizes find 64.
    per_item = {16: 3e-5, 64: 1e-5, 256: 1.1e-5}
    burst = {64: (1.2, 4)}
    run, _ = _probe(monkeypatch, per_item, burst)
    assert _batching.fastest_size(run, (16, 64, 256), refine_within=0.0)[0] == 256
    run, calls = _probe(monkeypatch, per_item, burst)
    size, timings = _batching.fastest_size(run, (16, 64, 256))
    assert size == 64
    assert timings[64] == pytest.approx(1e-5)
    # only the close sizes were timed again, in turns
    assert calls[12:] == [64, 256] * 3


def test_far_sizes_are_not_timed_again_and_the_cache_holds(monkeypatch):
    _batching.clear_cache()
    run, calls = _probe(monkeypatch, {16: 1e-5, 64: 5e-5, 256: 9e-5, 1024: 1e-6})
    assert _batching.fastest_size(run, (16, 64, 256, 1024), key="k")[0] == 16
    # four calls each of 16, 64 and 256; two sizes in a row over 1.5x the best end
    # the sweep before 1024, and no size is close to 16: no second look
    assert calls == [16] * 4 + [64] * 4 + [256] * 4
    assert _batching.fastest_size(run, (16, 64, 256, 1024), key="k")[0] == 16
    assert len(calls) == 12  # cached: no new probe
    _batching.clear_cache()


def test_bad_sizes():
    with pytest.raises(ValueError, match="sizes in fastest_size must be positive integers"):
        _batching.fastest_size(lambda n: None, (0, 4))

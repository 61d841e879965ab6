"""NeuralCleanse throughput: labels per chunk chosen by measurement, labels that stop when settled.

What is asserted is what the options change in the result (nothing, for the
chunking; the steps and not the flagged labels, for settling), never a timing:
``benchmarks/bench_nc_speed.py`` measures the speed.
"""

import copy

import numpy as np
import pytest
from conftest import shared_result

from contracts import raises_naming

from backdoorlearn import NeuralCleanse
from backdoorlearn.inspection import _neural_cleanse
from backdoorlearn.inspection._reverse import Task, reverse_chunk
from backdoorlearn.models import _batching

# settling off, so that the short runs compare the chunking alone (settling is tested on its own below)
SHORT = dict(steps=15, labels=[0, 1, 2, 3], random_state=0, settle_patience=None)


def _fit(bench, **params):
    b = bench
    return NeuralCleanse(**params).fit(b.backdoored_model, b.X_holdout, b.y_holdout)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.l1_norms_, b.l1_norms_)
    np.testing.assert_array_equal(a.n_steps_, b.n_steps_)
    for key in a.reversed_triggers_:
        np.testing.assert_array_equal(a.reversed_triggers_[key].mask, b.reversed_triggers_[key].mask)
        np.testing.assert_array_equal(a.reversed_triggers_[key].pattern, b.reversed_triggers_[key].pattern)


@pytest.fixture(scope="module")
def one_at_a_time(digits_bench):
    return _fit(digits_bench, label_chunk_size=1, **SHORT)


@pytest.fixture
def counted_probe(monkeypatch):
    """Count the probe's timed steps: (calls,) grows each time the probe runs a step."""
    calls = []
    real = _neural_cleanse.step_probe

    def probe(*args, **kwargs):
        run = real(*args, **kwargs)

        def counted(k):
            calls.append(k)
            return run(k)
        return counted

    monkeypatch.setattr(_neural_cleanse, "step_probe", probe)
    _batching.clear_cache()
    return calls


# ---------------------------------------------------------------------- labels per chunk
def test_auto_chunk_is_bit_identical_to_one_label_at_a_time(digits_bench, one_at_a_time, counted_probe):
    auto = _fit(digits_bench, label_chunk_size="auto", **SHORT)
    _assert_same(auto, one_at_a_time)
    assert auto.label_chunk_size_ in (1, 2, 4)
    assert set(auto.label_chunk_timings_) <= {1, 2, 4} and auto.label_chunk_timings_
    assert counted_probe  # the probe ran
    assert one_at_a_time.label_chunk_size_ == 1 and one_at_a_time.label_chunk_timings_ is None


def test_chosen_chunking_changes_nothing(digits_bench, one_at_a_time, monkeypatch):
    # whatever the probe finds on this machine: timings that make two chunks of 2 the cheapest
    timings = {1: 3.0, 2: 1.0, 4: 2.0}
    monkeypatch.setattr(_neural_cleanse, "fastest_size", lambda run, sizes, **kw: (2, dict(timings)))
    nc = _fit(digits_bench, label_chunk_size="auto", **SHORT)
    assert nc.label_chunk_size_ == 2
    assert nc.label_chunk_timings_ == timings
    _assert_same(nc, one_at_a_time)


def test_chunking_counts_the_remainder_chunk():
    # the fastest K of 8 per label leaves a slow chunk of 2 for 10 labels: one chunk of 10 costs less
    timings = {1: 1.81, 2: 1.00, 4: 0.68, 8: 0.48, 10: 0.51}
    assert _neural_cleanse._cheapest_chunking(10, timings) == 10
    assert _neural_cleanse._cheapest_chunking(16, timings) == 8
    assert _neural_cleanse._cheapest_chunking(3, {1: 1.0, 2: 0.5}) == 2


def test_chunking_keeps_fewer_chunks_unless_more_cost_clearly_less():
    # two chunks of 5 cost 4.0, one chunk of 10: 4.5 (12.5% more) is kept, 4.7 (17.5% more) is not
    assert _neural_cleanse._cheapest_chunking(10, {1: 1.0, 2: 0.5, 5: 0.40, 10: 0.45}) == 10
    assert _neural_cleanse._cheapest_chunking(10, {1: 1.0, 2: 0.5, 5: 0.40, 10: 0.47}) == 5


def test_explicit_chunk_size_wins_and_is_recorded(digits_bench, one_at_a_time, counted_probe):
    nc = _fit(digits_bench, label_chunk_size=3, **SHORT)
    assert nc.label_chunk_size_ == 3 and nc.label_chunk_timings_ is None
    assert not counted_probe
    _assert_same(nc, one_at_a_time)
    assert _fit(digits_bench, label_chunk_size=50, **SHORT).label_chunk_size_ == 4  # at most the labels
    assert _fit(digits_bench, label_chunk_size=None, **SHORT).label_chunk_size_ == 4  # 8x8: all at once


def test_probe_is_cached_per_model_shape(digits_bench, counted_probe):
    first = _fit(digits_bench, label_chunk_size="auto", **SHORT)
    n_probe_steps = len(counted_probe)
    assert n_probe_steps > 0
    again = _fit(digits_bench, label_chunk_size="auto", **dict(SHORT, random_state=1))
    assert len(counted_probe) == n_probe_steps  # same architecture, shape, device, threads: no new probe
    assert again.label_chunk_size_ == first.label_chunk_size_
    assert again.label_chunk_timings_ == first.label_chunk_timings_
    _fit(digits_bench, label_chunk_size="auto", train_batch_size=16, **SHORT)
    assert len(counted_probe) > n_probe_steps  # another mini-batch size is another probe


def test_probe_leaves_model_and_global_rng_alone(digits_bench, counted_probe):
    import torch

    model = digits_bench.backdoored_model
    before = {k: v.clone() for k, v in model.module_.state_dict().items()}
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    _fit(digits_bench, label_chunk_size="auto", **SHORT)
    assert counted_probe
    for k, v in model.module_.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.module_.parameters())
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.random.get_rng_state(), torch_state)


# ---------------------------------------------------------------------- labels that stop when settled
def _full_run(bench, **params):
    """NeuralCleanse with its defaults on the digits benchmark model's hold-out, once per session."""
    key = ("nc speed digits", tuple(sorted(params.items())))
    return shared_result(key, lambda: _fit(bench, random_state=0, **params))


def test_settled_labels_save_steps_and_keep_the_flagged_labels(digits_bench):
    off = _full_run(digits_bench, settle_patience=None)
    on = _full_run(digits_bench, settle_patience=10)
    assert on.flagged_labels_ == off.flagged_labels_ == [digits_bench.target_label]
    assert on.label_steps_ < off.label_steps_
    assert on.label_steps_ == on.n_steps_.sum() and off.label_steps_ == off.n_steps_.sum()
    assert on.settled_.any() and not off.settled_.any()
    assert off.label_steps_saved_ == 0
    # the saving against running to the cap bounds the saving against the reference's own early stop
    assert on.label_steps_saved_ == int((on.steps - on.n_steps_[on.settled_]).sum())
    assert on.label_steps_saved_ >= off.label_steps_ - on.label_steps_ > 0
    # a settled label keeps the smallest mask that reached the threshold
    assert (on.reversed_attack_success_[on.settled_] >= 0.9).all()


def test_settling_does_not_depend_on_the_chunking(digits_bench):
    kw = dict(SHORT, settle_patience=3)
    one = _fit(digits_bench, label_chunk_size=1, **kw)
    batched = _fit(digits_bench, label_chunk_size=4, **kw)
    _assert_same(one, batched)
    np.testing.assert_array_equal(one.settled_, batched.settled_)
    assert one.settled_.any()


def test_settling_off_is_the_reference_schedule(digits_bench, one_at_a_time):
    # a patience longer than the steps never fires: the same result as off, bit for bit
    never = _fit(digits_bench, label_chunk_size=1, **dict(SHORT, settle_patience=SHORT["steps"] + 1))
    _assert_same(never, one_at_a_time)
    assert not never.settled_.any() and never.label_steps_saved_ == 0
    # and off is the optimisation as configured before the option existed (no settle keys at all)
    b = digits_bench
    assert NeuralCleanse().settle_patience is None  # off by default: the reference's rule
    nc = NeuralCleanse(**SHORT)
    cfg = nc._config(b.X_holdout, [np.flatnonzero(b.y_holdout != t) for t in SHORT["labels"]])
    legacy = {k: v for k, v in cfg.items() if not k.startswith("settle_")}
    rng = np.random.RandomState(0)
    seeds = rng.randint(0, 2**31 - 1, size=(1, 4))[0]
    tasks = [Task(t, np.flatnonzero(b.y_holdout != t), int(s)) for t, s in zip(SHORT["labels"], seeds)]
    model = copy.deepcopy(b.backdoored_model.module_).eval().requires_grad_(False)
    results = reverse_chunk(model, b.X_holdout, tasks, legacy, device="cpu")
    np.testing.assert_array_equal([r.l1_norm for r in results], one_at_a_time.l1_norms_)


def test_errors(digits_bench):
    with raises_naming("settle_patience"):
        _fit(digits_bench, **dict(SHORT, settle_patience=0))
    with raises_naming("label_chunk_size", match="auto"):
        _fit(digits_bench, label_chunk_size="fast", **SHORT)

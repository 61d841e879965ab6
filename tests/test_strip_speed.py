"""STRIPDetector's batch size chosen by measurement and its early-stopping mode (issue 17).

No timing is asserted here: ``benchmarks/bench_strip_speed.py`` measures the speed.
"""

import numpy as np
import pytest
import torch
from sklearn.base import clone

from contracts import raises_naming

from backdoorlearn import SmallCNN, STRIPDetector
from backdoorlearn.detection import _strip
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate
from backdoorlearn.models import _batching


class RowwiseProba:
    """A black box whose every row depends on that row alone, through elementwise numpy only.

    No matrix product, so its outputs are bit-identical whatever rows it is
    called with: exact checks of batching and order are possible. Feature 0
    is the "trigger": near 1 it makes class 0 certain, at 0 the class comes
    from the other features and blends are ambiguous.
    """

    classes_ = np.arange(4)

    def __init__(self):
        self.n_calls = 0
        self.rows = []

    def predict_proba(self, X):
        self.n_calls += 1
        self.rows.append(len(X))
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        z = np.empty((len(X), 4))
        z[:, 0] = 20.0 * X[:, 0]
        for j in range(1, 4):
            z[:, j] = 3.0 * np.sin(7.0 * X[:, j] + j)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / (e[:, 0] + e[:, 1] + e[:, 2] + e[:, 3])[:, None]


def _pool_and_inputs(n_pool=200, n=120, seed=0):
    rng = np.random.default_rng(seed)
    pool = rng.random((n_pool, 4), dtype=np.float32)
    pool[:, 0] = 0.0
    X = rng.random((n, 4), dtype=np.float32)
    X[:, 0] = np.linspace(0, 1, n, dtype=np.float32)  # from clean (0) to triggered (1)
    return pool, X


@pytest.fixture
def fresh_cache():
    _batching.clear_cache()
    yield
    _batching.clear_cache()


def _count_probes(monkeypatch):
    """Make every probe run (``run(size)`` call) of STRIP's ``fastest_size`` counted."""
    calls = []
    real = _batching.fastest_size

    def counting(run, *args, **kwargs):
        return real(lambda size: (calls.append(size), run(size)), *args, **kwargs)

    monkeypatch.setattr(_strip, "fastest_size", counting)
    return calls


# ---------------------------------------------------------------- batch size by measurement
def test_auto_batch_gives_the_results_of_explicit_sizes(digits_bench):
    # Blends are summed per input once all are known, so the batch size never
    # changes a summation. On this CPU the scores are bit-identical here; a
    # CPU's matrix kernels may round a blend's logits differently at other
    # batch sizes (in the last float32 digits, about 1e-7 of an entropy), so
    # the check allows 1e-9 on scores in [0, 1] (and rtol 1e-6) rather than 0.
    b = digits_bench
    X = np.concatenate([b.X_test[:40], b.X_test_triggered[:40]])
    kw = dict(n_perturbations=20, random_state=0)
    auto = STRIPDetector(b.backdoored_model, **kw).fit(b.X_holdout)
    assert auto.batch_size_ in _batching.DEFAULT_SIZES
    reference = auto.score_samples(X)
    for size in (16, 1024):
        other = STRIPDetector(b.backdoored_model, batch_size=size, **kw).fit(b.X_holdout)
        assert other.batch_size_ == size
        np.testing.assert_allclose(other.benign_scores_, auto.benign_scores_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(other.threshold_, auto.threshold_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(other.score_samples(X), reference, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(other.predict(X), auto.predict(X))


def test_explicit_int_wins_and_is_recorded(monkeypatch):
    calls = _count_probes(monkeypatch)
    X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    strip = STRIPDetector(SmallCNN(1, 10), n_perturbations=10, batch_size=48, random_state=0).fit(X)
    assert strip.batch_size_ == 48 and strip.batch_size == 48
    assert calls == []  # no probe
    model = RowwiseProba()
    pool, Xb = _pool_and_inputs()
    strip = STRIPDetector(model, n_perturbations=10, batch_size=48, random_state=0).fit(pool)
    model.rows.clear()
    strip.score_samples(Xb)
    assert max(model.rows) == 48 and sum(model.rows) == 10 * len(Xb)


def test_auto_for_a_black_box_is_a_fixed_size_without_probe(monkeypatch):
    calls = _count_probes(monkeypatch)
    pool, _ = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=10, random_state=0).fit(pool)
    assert strip.batch_size == "auto" and strip.batch_size_ == 1024
    assert calls == []


def test_probe_is_cached_per_architecture(monkeypatch, fresh_cache):
    calls = _count_probes(monkeypatch)
    X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    torch.manual_seed(0)
    first = STRIPDetector(SmallCNN(1, 10), n_perturbations=10, random_state=0).fit(X)
    assert len(calls) > 0 and first.batch_size_ in _batching.DEFAULT_SIZES
    probed = len(calls)
    # same architecture, other weights, another detector: the cached choice, no probe
    second = clone(first).set_params(model=SmallCNN(1, 10), random_state=1).fit(X)
    assert len(calls) == probed
    assert second.batch_size_ == first.batch_size_
    # another input shape is another key: a new probe
    STRIPDetector(SmallCNN(1, 10), n_perturbations=10, random_state=0).fit(
        np.random.default_rng(1).random((30, 1, 12, 12), dtype=np.float32))
    assert len(calls) > probed


def _layout_says(monkeypatch, faster):
    """Make STRIP's layout probe answer ``faster`` (the real one times the machine), counting its calls."""
    calls = []

    def fake(run, size, **kwargs):
        calls.append(size)
        run(size, True), run(size, False)  # the module is called in both layouts, as by the real probe
        return faster, {}

    monkeypatch.setattr(_strip, "faster_layout", fake)
    return calls


class LayoutSensitive(torch.nn.Module):
    """Answers differently for a channels_last input: a module the layout would change."""

    def __init__(self, channels):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(channels * 64, 4)

    def forward(self, x):
        shift = 0.0 if x.is_contiguous() else 5.0
        return self.lin(x.flatten(1)) + shift * torch.tensor([1.0, 0, 0, 0])


class ViewsItsInput(LayoutSensitive):
    def forward(self, x):
        return self.lin(x.view(len(x), -1))  # fails on a channels_last tensor


def test_channels_last_where_the_probe_finds_it_faster_gives_the_same_scores(monkeypatch, fresh_cache):
    rng = np.random.default_rng(0)
    pool, X = rng.random((40, 3, 8, 8), dtype=np.float32), rng.random((30, 3, 8, 8), dtype=np.float32)
    torch.manual_seed(0)
    model = SmallCNN(3, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = _layout_says(monkeypatch, True)
    fast = STRIPDetector(model, n_perturbations=10, random_state=0).fit(pool)
    assert fast.memory_format_ == "channels_last" and calls
    usual = STRIPDetector(model, n_perturbations=10, random_state=0, batch_size=fast.batch_size_).fit(pool)
    assert usual.memory_format_ == "contiguous"  # an explicit batch size: no probe, the usual layout
    np.testing.assert_allclose(fast.score_samples(X), usual.score_samples(X), rtol=1e-6, atol=1e-7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.is_contiguous() for p in model.parameters())  # the user's model is left as it was


def test_channels_last_is_not_used_where_the_module_answers_otherwise(monkeypatch, fresh_cache):
    # the probe says channels_last is faster; the check of the entropies after it keeps the usual layout
    _layout_says(monkeypatch, True)
    pool = np.random.default_rng(0).random((40, 3, 8, 8), dtype=np.float32)
    strip = STRIPDetector(LayoutSensitive(3), n_perturbations=10, random_state=0).fit(pool)
    assert strip.memory_format_ == "contiguous"


def test_channels_last_is_not_used_where_the_module_refuses_it(fresh_cache):
    # the real probe: the module raises on a channels_last tensor
    pool = np.random.default_rng(0).random((40, 3, 8, 8), dtype=np.float32)
    strip = STRIPDetector(ViewsItsInput(3), n_perturbations=10, random_state=0).fit(pool)
    assert strip.memory_format_ == "contiguous"
    assert strip.score_samples(pool[:5]).shape == (5,)


def test_no_layout_probe_for_one_channel_or_an_explicit_size(monkeypatch, fresh_cache):
    calls = _layout_says(monkeypatch, True)
    X = np.random.default_rng(0).random((30, 1, 8, 8), dtype=np.float32)
    assert STRIPDetector(SmallCNN(1, 10), n_perturbations=10).fit(X).memory_format_ == "contiguous"
    X3 = np.random.default_rng(0).random((30, 3, 8, 8), dtype=np.float32)
    assert STRIPDetector(SmallCNN(3, 10), n_perturbations=10, batch_size=32).fit(X3).memory_format_ == "contiguous"
    assert calls == []


@pytest.mark.parametrize("params, name", [
    (dict(batch_size="fast"), "batch_size"),
    (dict(batch_size=0), "batch_size"),
    (dict(early_stopping="yes"), "early_stopping"),
    (dict(stopping_round=0), "stopping_round"),
    (dict(stopping_z=0.0), "stopping_z"),
])
def test_error_bad_parameters(params, name):
    pool, _ = _pool_and_inputs()
    with raises_naming(f"'{name}' parameter"):
        STRIPDetector(RowwiseProba(), **params).fit(pool)


# ---------------------------------------------------------------- early stopping
def test_early_stopping_is_off_by_default():
    pool, X = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=30, random_state=0)
    assert strip.early_stopping is False
    strip.fit(pool)
    scores, counts = strip.score_samples_and_counts(X)
    assert (counts == 30).all()
    np.testing.assert_array_equal(scores, strip.score_samples(X))


def test_input_far_from_the_threshold_stops_early():
    pool, X = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=60, early_stopping=True, random_state=0).fit(pool)
    scores, counts = strip.score_samples_and_counts(X)
    triggered = X[:, 0] > 0.9
    # entropy ~0, far below the threshold: flagged at the first look a flag gets, 2 rounds
    assert (counts[triggered] == 20).all(), counts[triggered]
    assert (scores[triggered] < strip.threshold_).all()
    assert ((counts < 60) & (scores > strip.threshold_ + 0.2)).any()  # accepted early, far above it
    assert (counts[scores < strip.threshold_] >= 20).all()  # never flagged after one round
    assert ((counts == 60) & (np.abs(scores - strip.threshold_) < 0.05)).any()  # near it: all N blends
    assert ((counts % 10 == 0) | (counts == 60)).all()
    np.testing.assert_array_equal(strip.predict(X), (scores < strip.threshold_).astype(int))


def test_inputs_that_run_to_n_score_exactly_as_fixed_n():
    pool, X = _pool_and_inputs()
    kw = dict(n_perturbations=60, random_state=0)
    fixed = STRIPDetector(RowwiseProba(), **kw).fit(pool)
    adaptive = STRIPDetector(RowwiseProba(), early_stopping=True, **kw).fit(pool)
    # fit always uses the fixed N
    np.testing.assert_array_equal(adaptive.benign_scores_, fixed.benign_scores_)
    assert adaptive.threshold_ == fixed.threshold_
    reference = fixed.score_samples(X)
    scores, counts = adaptive.score_samples_and_counts(X)
    full = counts == 60
    assert full.any() and not full.all()
    np.testing.assert_array_equal(scores[full], reference[full])
    # a very cautious test runs every input to N: the fixed-N scores, bit for bit
    cautious = clone(adaptive).set_params(stopping_z=1e9).fit(pool)
    scores, counts = cautious.score_samples_and_counts(X)
    assert (counts == 60).all()
    np.testing.assert_array_equal(scores, reference)


def test_stopped_input_scores_the_first_k_overlays_of_fixed_n():
    # The k-th overlay is the same as in fixed-N mode, and the first k are
    # what n_perturbations=k draws: a stopped input's score is that fixed-k score.
    pool, X = _pool_and_inputs()
    adaptive = STRIPDetector(RowwiseProba(), n_perturbations=60, early_stopping=True, random_state=0).fit(pool)
    scores, counts = adaptive.score_samples_and_counts(X)
    for k in np.unique(counts):
        rows = counts == k
        fixed_k = STRIPDetector(RowwiseProba(), n_perturbations=int(k), random_state=0).fit(pool)
        np.testing.assert_array_equal(scores[rows], fixed_k.score_samples(X[rows]))


def test_answers_do_not_depend_on_batch_composition_or_order():
    pool, X = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=60, early_stopping=True, random_state=0).fit(pool)
    scores, counts = strip.score_samples_and_counts(X)
    perm = np.random.default_rng(1).permutation(len(X))
    s_perm, c_perm = strip.score_samples_and_counts(X[perm])
    np.testing.assert_array_equal(s_perm, scores[perm])
    np.testing.assert_array_equal(c_perm, counts[perm])
    for rows in (slice(0, 1), slice(None, None, 3), slice(50, 70)):
        s, c = strip.score_samples_and_counts(X[rows])
        np.testing.assert_array_equal(s, scores[rows])
        np.testing.assert_array_equal(c, counts[rows])
    small = clone(strip).set_params(batch_size=7).fit(pool)
    s, c = small.score_samples_and_counts(X)
    np.testing.assert_array_equal(s, scores)
    np.testing.assert_array_equal(c, counts)


def test_scoring_changes_no_attribute():
    pool, X = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=40, early_stopping=True, random_state=0).fit(pool)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(strip).items()}
    strip.score_samples_and_counts(X), strip.predict(X), strip.score_samples(X)
    after = vars(strip)
    assert set(after) == set(before)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value)
        else:
            assert after[key] is value or after[key] == value, key


def test_early_stopping_refuses_a_non_finite_threshold():
    pool, X = _pool_and_inputs()
    strip = STRIPDetector(RowwiseProba(), n_perturbations=20, early_stopping=True, random_state=0).fit(pool)
    strip.threshold_ = float("nan")
    with raises_naming("threshold_"):
        strip.score_samples(X)


def test_digits_far_and_frr_close_to_fixed_n(digits_bench):
    # On the embedded digits benchmark (N=100, FRR 1%): the same FAR and FRR
    # within half a point, for at most 30% of the perturbations.
    b = digits_bench
    fixed = STRIPDetector(b.backdoored_model, random_state=0).fit(b.X_holdout)
    adaptive = clone(fixed).set_params(early_stopping=True).fit(b.X_holdout)
    rates = []
    for det in (fixed, adaptive):
        sc, cc = det.score_samples_and_counts(b.X_test)
        st, ct = det.score_samples_and_counts(b.X_test_triggered)
        clean, trig = (sc < det.threshold_).astype(int), (st < det.threshold_).astype(int)
        rates.append((false_rejection_rate(np.zeros_like(clean), clean),
                      false_acceptance_rate(np.ones_like(trig), trig), np.concatenate([cc, ct]).mean()))
    (frr0, far0, n0), (frr1, far1, n1) = rates
    assert n0 == 100
    assert n1 <= 30, n1
    assert abs(frr1 - frr0) <= 0.005, (frr0, frr1)
    assert abs(far1 - far0) <= 0.005, (far0, far1)

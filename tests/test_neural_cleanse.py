"""NeuralCleanse: detection quality on the embedded benchmarks, batching, options, errors."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.neural_network import MLPClassifier

from contracts import check_same_seed_same_result, raises_naming, watch

from backdoorlearn import BackdoorPoisoner, NeuralCleanse, Trigger
from backdoorlearn.inspection import log_anomaly_scores, log_norm_thresholds, mad_anomaly_index
from backdoorlearn.metrics import attack_success_rate
from backdoorlearn.models import train_classifier


def _train_like_the_benchmark(X, y, bench):
    """A network of the benchmark's architecture and training budget, on other data."""
    return train_classifier(X, y, n_classes=bench.n_classes, module_params=bench.module_params,
                            random_state=0, **bench.train_params)


def defender_data(bench, n=400):
    """The defender's clean images: the hold-out, topped up to ``n`` with clean training
    images (never test images, so the attack success measured on the test set is fair).

    The paper's authors use a few hundred images; with the 123 hold-out digits
    alone a reversed trigger can reach the threshold on them and miss it on the
    test set. The model saw these training images, but only clean ones.
    """
    extra = np.flatnonzero(~bench.poison_mask)[: max(0, n - len(bench.X_holdout))]
    return (np.concatenate([bench.X_holdout, bench.X_train[extra]]),
            np.concatenate([bench.y_holdout, bench.y_train_clean[extra]]))


def _fit(model, bench, n_images=400, **params):
    params.setdefault("random_state", 0)
    return NeuralCleanse(**params).fit(model, *defender_data(bench, n_images))


def _check_backdoored(nc, bench):
    assert bench.target_label in nc.flagged_labels_, (nc.l1_norms_, nc.decision_scores_)
    assert nc.backdoor_detected_
    trig = nc.reversed_triggers_[bench.target_label]
    pred = bench.backdoored_model.predict(trig.apply(bench.X_test))
    assert attack_success_rate(bench.y_test, pred, bench.target_label) >= 0.97


@pytest.fixture(scope="module")
def nc_digits_run(digits_bench):
    X, y = defender_data(digits_bench)
    with watch(digits_bench.backdoored_model, X, y) as w:
        nc = NeuralCleanse(random_state=0).fit(digits_bench.backdoored_model, X, y)
    return nc, w


@pytest.fixture(scope="module")
def nc_digits(nc_digits_run):
    return nc_digits_run[0]


# ---------------------------------------------------------------------- quality
@pytest.mark.slow
def test_fit_leaves_model_and_data_unchanged(nc_digits_run):
    nc_digits_run[1].assert_unchanged()


@pytest.mark.slow
def test_backdoored_digits_detected(nc_digits, digits_bench):
    _check_backdoored(nc_digits, digits_bench)
    assert nc_digits.flagged_labels_ == [0]
    assert set(nc_digits.reversed_triggers_) == set(range(10))
    assert np.isfinite(nc_digits.l1_norms_).all() and np.isfinite(nc_digits.anomaly_indices_).all()
    assert nc_digits.reversed_attack_success_[0] >= 0.97
    # the reversed trigger is far smaller than the median label's
    assert nc_digits.l1_norms_[0] < 0.5 * nc_digits.median_l1_norm_


@pytest.mark.slow
def test_clean_digits_not_detected(digits_bench):
    nc = _fit(digits_bench.clean_model, digits_bench)
    assert not nc.backdoor_detected_ and nc.flagged_labels_ == []


# The embedded benchmarks train differently with the CPU's float arithmetic: on one machine of
# 2026-12-02 digits seed 3's reversed trigger sent 95.3% of the test images to the target (97% asked),
# on another signs seed 2's clean model was flagged. A per-seed assertion then passes on one CPU and
# fails on the next; the sweeps assert per seed what held on every machine seen, and count the rest.
def _sweep(benchmark_factory, dataset, seeds, **fit_kw):
    """Per seed: (target flagged, reversed trigger's test ASR, clean model flagged)."""
    out = {}
    for seed in seeds:
        bench = benchmark_factory(dataset, random_state=seed)
        nc = _fit(bench.backdoored_model, bench, **fit_kw)
        pred = bench.backdoored_model.predict(nc.reversed_triggers_[bench.target_label].apply(bench.X_test))
        out[seed] = (bench.target_label in nc.flagged_labels_,
                     attack_success_rate(bench.y_test, pred, bench.target_label),
                     _fit(bench.clean_model, bench, **fit_kw).backdoor_detected_)
    return out


@pytest.mark.slow
def test_digits_seed_sweep(benchmark_factory):
    res = _sweep(benchmark_factory, "digits", range(5))
    assert all(hit and not clean for hit, _, clean in res.values()), res
    assert sum(asr >= 0.97 for _, asr, _ in res.values()) >= 4, res


@pytest.mark.slow
def test_signs_seed_sweep(benchmark_factory):
    # the 205 hold-out signs alone
    res = _sweep(benchmark_factory, "signs", range(5), n_images=0)
    assert sum(hit and asr >= 0.97 for hit, asr, _ in res.values()) >= 4, res
    assert sum(hit and asr >= 0.97 and not clean for hit, asr, clean in res.values()) >= 3, res


@pytest.fixture(scope="module")
def multi_target_model(digits_bench):
    b = digits_bench
    clean = ~b.poison_mask
    X, y = b.X_train[clean], b.y_train_clean[clean]
    triggers = [Trigger.patch((1, 8, 8), size=2, location="bottom-right"),
                Trigger.patch((1, 8, 8), size=2, location="top-left")]
    poisoner = BackdoorPoisoner(triggers, target_label=[0, 5], poison_rate=0.2, n_classes=10,
                                random_state=0)
    X_p, y_p = poisoner.fit_resample(X, y)
    return _train_like_the_benchmark(X_p, y_p, b), triggers


@pytest.mark.slow
def test_multi_target_both_flagged(multi_target_model, digits_bench):
    net, triggers = multi_target_model
    for trig, target in zip(triggers, (0, 5)):  # the attack worked
        asr = attack_success_rate(digits_bench.y_test, net.predict(trig.apply(digits_bench.X_test)), target)
        assert asr > 0.9
    nc = _fit(net, digits_bench, n_images=0)  # the 123 hold-out images suffice here
    assert {0, 5} <= set(nc.flagged_labels_), (nc.l1_norms_, nc.anomaly_indices_)


@pytest.fixture(scope="module")
def source_specific_model(digits_bench):
    """A partial backdoor (paper, Sec. VII-E): the trigger sends label 3 to 0 and
    nothing else; cover samples (the trigger on other labels, labels kept) keep it
    from generalizing to every source."""
    b = digits_bench
    clean = ~b.poison_mask
    X, y = b.X_train[clean], b.y_train_clean[clean]
    trigger = Trigger.patch((1, 8, 8), size=2)
    poisoner = BackdoorPoisoner(trigger, target_label=0, poison_rate=0.05, source_labels=[3],
                                n_classes=10, random_state=0)
    X_p, y_p = poisoner.fit_resample(X, y)
    cover = np.random.default_rng(0).choice(np.flatnonzero(y != 3), size=110, replace=False)
    X_p = np.concatenate([X_p, trigger.apply(X[cover])])
    y_p = np.concatenate([y_p, y[cover]])
    return _train_like_the_benchmark(X_p, y_p, b), trigger


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "target: the (3, 0) pair flagged alone among the pairs from label 3 on digits; "
    "benchmarks/results/neural_cleanse.txt, 'partial backdoor' rows"))
def test_source_specific_backdoor_found_by_pairs(source_specific_model, digits_bench):
    b = digits_bench
    net, trigger = source_specific_model
    src = b.y_test == 3
    # the backdoor is partial: it works from label 3, not from the others
    assert attack_success_rate(b.y_test[src], net.predict(trigger.apply(b.X_test[src])), 0) > 0.9
    assert attack_success_rate(b.y_test, net.predict(trigger.apply(b.X_test)), 0) < 0.3
    nc = _fit(net, b, n_images=0, pairs=[(3, t) for t in range(10) if t != 3])
    assert nc.pairs_.shape == (9, 2)
    assert nc.flagged_pairs_ == [(3, 0)], (nc.l1_norms_, nc.anomaly_indices_)
    assert nc.flagged_labels_ == [0]


def test_pairs_option_runs_on_source_images(digits_bench):
    b = digits_bench
    nc = _fit(b.backdoored_model, b, n_images=0, steps=3, pairs="all", labels=[0, 1, 2])
    assert sorted(nc.reversed_triggers_) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert nc.pairs_.shape == (6, 2) and nc.labels_.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.isfinite(nc.reversed_attack_success_).all()


# ---------------------------------------------------------------------- batching and options
def test_batched_equals_one_label_at_a_time(digits_bench):
    kw = dict(steps=15, labels=[0, 1, 2, 3])
    batched = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, **kw)
    single = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, label_chunk_size=1, **kw)
    np.testing.assert_allclose(batched.l1_norms_, single.l1_norms_, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(batched.n_steps_, single.n_steps_)


def test_samples_per_step_sets_the_schedule_cadence(digits_bench):
    b = digits_bench
    kw = dict(steps=2, labels=[0, 1, 2], random_state=0)
    one_pass = NeuralCleanse(**kw).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    same = NeuralCleanse(samples_per_step=len(b.X_holdout), **kw).fit(b.backdoored_model, b.X_holdout,
                                                                      b.y_holdout)
    longer = NeuralCleanse(samples_per_step=1000, **kw).fit(b.backdoored_model, b.X_holdout, b.y_holdout)
    np.testing.assert_array_equal(one_pass.l1_norms_, same.l1_norms_)
    # 32 mini-batches per step instead of 4: the masks moved further in two steps, in total (a label
    # whose mask has nearly settled can end a few hundredths either way, depending on the CPU's float order)
    assert not np.array_equal(longer.l1_norms_, one_pass.l1_norms_)
    assert longer.l1_norms_.sum() < one_pass.l1_norms_.sum() - 5, (longer.l1_norms_, one_pass.l1_norms_)
    with pytest.raises(ValueError, match="samples_per_step"):
        NeuralCleanse(samples_per_step=0).fit(b.backdoored_model, b.X_holdout)


@pytest.mark.slow
def test_n_jobs_does_not_change_result(digits_bench):
    kw = dict(steps=5, labels=[0, 1, 2, 3], label_chunk_size=2)
    one = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, **kw)
    two = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, n_jobs=2, **kw)
    np.testing.assert_allclose(one.l1_norms_, two.l1_norms_, rtol=1e-3, atol=1e-3)


def test_random_state_repeatable_and_global_rng_untouched(digits_bench):
    b = digits_bench
    check_same_seed_same_result(NeuralCleanse(steps=4, labels=[0, 1, 2], random_state=0),
                                lambda est: est.fit(b.backdoored_model, b.X_holdout, b.y_holdout),
                                lambda est: (est.l1_norms_, est.anomaly_indices_, est.n_steps_))


def test_fast_mode_flags_target(digits_bench):
    nc = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, mode="fast", fast_steps=5, fast_top_k=2,
              fast_n_random=5)
    assert nc.fully_optimized_.sum() == 7
    assert nc.fully_optimized_[0]
    assert nc.flagged_labels_ == [0]
    # The screened labels' norms are put on the full scale by the random labels'
    # full / screening ratio; the median and MAD come from all ten labels.
    screened = nc.screening_l1_norms_
    assert screened.shape == (10,)
    random_part = np.flatnonzero(nc.fully_optimized_)
    random_part = random_part[np.argsort(screened[random_part])][2:]  # the 2 top-k are the smallest
    ratio = np.median(nc.l1_norms_[random_part] / screened[random_part])
    est = np.where(nc.fully_optimized_, nc.l1_norms_, screened * ratio)
    assert nc.median_l1_norm_ == pytest.approx(np.median(est))


def test_restarts_report_spread(digits_bench):
    nc = _fit(digits_bench.backdoored_model, digits_bench, n_images=0, steps=10, n_restarts=2, labels=[0, 1, 2, 3])
    assert nc.restart_anomaly_indices_.shape == (2,)
    assert np.isfinite(nc.restart_anomaly_indices_).all()
    # the kept trigger is the best of the restarts
    assert nc.n_steps_.min() >= 2


def test_without_labels_uses_predictions(digits_bench):
    nc = NeuralCleanse(steps=3, labels=[0, 1, 2], random_state=0).fit(
        digits_bench.backdoored_model, digits_bench.X_holdout)
    assert nc.l1_norms_.shape == (3,)
    assert nc.screening_l1_norms_ is None


def test_clone_and_params():
    nc = NeuralCleanse(steps=7, labels=[1, 2, 3])
    assert clone(nc).get_params()["steps"] == 7


def test_mad_anomaly_index_never_nan():
    idx, median, mad = mad_anomaly_index([1.0, 1.0, 1.0, 0.5])
    assert mad == 0 and not np.isnan(idx).any()
    assert idx[-1] == np.inf and idx[0] == 0


def test_log_anomaly_scores_are_scale_free_and_leave_the_candidate_out():
    # Wide clean spread (25 to 108) with a target 5x below the median: the paper's
    # index of the raw norms ranks it with the hardest clean label; the log score does not.
    norms = np.array([60.0, 25.0, 108.0, 70.0, 48.0, 11.0, 85.0, 59.0, 40.0, 66.0])
    scores = log_anomaly_scores(norms)
    assert np.argmax(scores) == 5 and scores[5] > 3.5 > np.delete(scores, 5).max()
    np.testing.assert_allclose(log_anomaly_scores(norms * 7.3), scores)  # the scale does not matter
    paper, _, _ = mad_anomaly_index(norms)
    assert paper[5] == pytest.approx(paper[2])
    # leave one out: a candidate's own norm is not in its reference
    manual = (np.median(np.log(np.delete(norms, 5))) - np.log(11.0)) / (
        1.4826 * np.median(np.abs(np.log(np.delete(norms, 5)) - np.median(np.log(np.delete(norms, 5))))))
    assert scores[5] == pytest.approx(manual)


def test_log_anomaly_scores_groups_and_floor():
    norms = np.array([10.0, 10.1, 9.9, 10.0, 2.0, 20.0, 20.2, 19.8, 20.0, 20.1])
    groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    scores = log_anomaly_scores(norms, groups=groups)
    assert np.argmax(scores) == 4
    # norms within 1% of each other: the floor on the spread keeps their scores small
    assert np.abs(np.delete(scores, 4)).max() < 0.2
    assert np.isnan(log_anomaly_scores([1.0, 2.0, 3.0], groups=[0, 0, 1])).all()
    with pytest.raises(ValueError, match="positive finite norms"):
        log_anomaly_scores([1.0, 0.0, 2.0])


def test_log_norm_thresholds_are_the_scores_threshold_in_norm_units():
    rng = np.random.RandomState(0)
    norms = np.exp(rng.normal(3.5, 0.6, size=30))
    groups = np.repeat(np.arange(3), 10)
    for threshold in (1.0, 2.5, 3.5):
        bounds = log_norm_thresholds(norms, threshold, groups=groups)
        scores = log_anomaly_scores(norms, groups=groups)
        np.testing.assert_array_equal(norms < bounds, scores > threshold)
        # the score of a norm placed exactly on its bound is the threshold
        moved = norms.copy()
        moved[4] = bounds[4]
        assert log_anomaly_scores(moved, groups=groups)[4] == pytest.approx(threshold)


@pytest.mark.slow
def test_decision_rules_on_the_same_norms(nc_digits, digits_bench):
    # The paper's rule flags what its definition says, from the same optimization.
    X, y = defender_data(digits_bench)
    paper = NeuralCleanse(random_state=0, decision_rule="mad").fit(digits_bench.backdoored_model, X, y)
    np.testing.assert_array_equal(paper.l1_norms_, nc_digits.l1_norms_)
    below = paper.l1_norms_ < paper.median_l1_norm_
    expected = set(paper.labels_[below & (paper.anomaly_indices_ > 2)].tolist())
    assert set(paper.flagged_labels_) == expected and paper.decision_threshold_ == 2.0
    assert nc_digits.decision_threshold_ == 3.5
    np.testing.assert_allclose(nc_digits.decision_scores_, log_anomaly_scores(nc_digits.l1_norms_))
    for nc in (paper, nc_digits):
        below = nc.l1_norms_ < nc.decision_norm_thresholds_
        assert set(nc.flagged_labels_) == set(nc.labels_[below].tolist())
    np.testing.assert_array_equal(paper.anomaly_indices_, nc_digits.anomaly_indices_)  # the paper's figure either way


# ---------------------------------------------------------------------- errors
def test_errors(digits_bench):
    b = digits_bench
    X = b.X_holdout
    with pytest.raises(TypeError, match="white-box"):
        NeuralCleanse().fit(MLPClassifier(max_iter=5).fit(X.reshape(len(X), -1), b.y_holdout), X)
    with raises_naming("labels", match="at least 3 labels"):
        NeuralCleanse(labels=[0, 1]).fit(b.backdoored_model, X)
    with raises_naming("labels", match="got 12"):
        NeuralCleanse(labels=[0, 1, 12]).fit(b.backdoored_model, X)
    with raises_naming("X", match=r"1 channel\(s\) on axis 1.*got 3"):
        NeuralCleanse().fit(b.backdoored_model, np.zeros((4, 3, 8, 8), np.float32))
    with raises_naming("X", match="NaN"):
        NeuralCleanse().fit(b.backdoored_model, np.full((4, 1, 8, 8), np.nan, np.float32))
    with raises_naming("y", match=r"\[0, 9\]"):
        NeuralCleanse().fit(b.backdoored_model, X, np.full(len(X), 11))
    with raises_naming("pairs", match="source != target"):
        NeuralCleanse(pairs=[(1, 1), (1, 2), (1, 3)]).fit(b.backdoored_model, X)
    with raises_naming("steps"):
        NeuralCleanse(steps=0).fit(b.backdoored_model, X)
    with raises_naming("train_batch_size"):
        NeuralCleanse(train_batch_size=0).fit(b.backdoored_model, X)
    with raises_naming("decision_rule"):
        NeuralCleanse(decision_rule="zscore").fit(b.backdoored_model, X)


def test_nan_logits_raise_clear_error():
    class NaNNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 3)

        def forward(self, x):
            out = self.lin(x.flatten(1))
            return out * torch.where(x.flatten(1)[:, :1] > 2, torch.nan, 1.0)

    X = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    nc = NeuralCleanse(steps=50, random_state=0)
    # data in [0, 1]: the pattern may reach values > 2 only if the data range allowed it,
    # so feed a data range up to 3 to let stamped inputs produce NaN logits.
    X[0, 0, 0, 0] = 3.0
    with pytest.raises(FloatingPointError, match="non-finite"):
        nc.fit(NaNNet(), X, np.arange(12) % 3)

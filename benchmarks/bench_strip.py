"""STRIP: detection quality on the embedded benchmarks, and speed against its floor.

Quality: ``STRIPDetector`` with N=100 and the threshold learned on the clean
hold-out at 1% FRR (``random_state=0``), measured on the clean test set (FRR)
and on its triggered copy (FAR), for the backdoored and the clean models, a
black-box ``MLPClassifier`` and both clipping settings.

Speed: STRIP's floor is N forward passes per input. For N=100 perturbations
and 1000 inputs this times ``STRIPDetector.score_samples(X)`` (100 000
blended rows) against N calls of the adapter's ``predict_proba(X)`` on the
same inputs, with the same model, batch size and number of threads, and
prints their ratio (the target is <= 1.10): of the best of ``--repeats``
interleaved runs in wall-clock time, and of the median CPU (process) times,
which a machine shared with other jobs disturbs less.

    python benchmarks/bench_strip.py [--threads 1] [--batch-size 1024] [--no-quality] [--no-speed]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from _report import parse
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from backdoorlearn import STRIPDetector, make_backdoor_benchmark
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate
from backdoorlearn.models import ModelAdapter


def flat(X):
    return X.reshape(len(X), -1)


def poisoned_mlp(bench):
    """A black box trained on the poisoned training set (flattened images): backdoored too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(
            flat(bench.X_train), bench.y_train)


def quality_row(out, name, model, X_pool, X_clean, X_triggered, note="", **params):
    strip = STRIPDetector(model, random_state=0, **params).fit(X_pool)
    clean, trig = strip.predict(X_clean), strip.predict(X_triggered)
    frr = false_rejection_rate(np.zeros_like(clean), clean)
    far = false_acceptance_rate(np.ones_like(trig), trig)
    out(f"  {name:52s} {100 * frr:8.1f}% {100 * far:8.1f}% {100 * trig.mean():10.1f}%   {note}".rstrip())


def quality(out, benches):
    out("== quality: N=100, threshold at 1% FRR on the clean hold-out, random_state=0")
    out(f"  {'model':52s} {'FRR':>9s} {'FAR':>9s} {'triggered':>11s}   note")
    out(f"  {'':52s} {'(clean)':>9s} {'(trig.)':>9s} {'flagged':>11s}")
    for seed in (0, 1):
        b = benches["digits", seed]
        note = "paper (MNIST, N=100): FAR 1.85% at FRR 1%" if seed == 0 else ""
        quality_row(out, f"digits CNN, backdoored, seed {seed}", b.backdoored_model, b.X_holdout, b.X_test,
                    b.X_test_triggered, note)
    b = benches["digits", 0]
    quality_row(out, "digits CNN, backdoored, seed 0, clip_range=None", b.backdoored_model, b.X_holdout, b.X_test,
                b.X_test_triggered, clip_range=None)
    quality_row(out, "digits MLPClassifier (n, 64), poisoned set, seed 0", poisoned_mlp(b), flat(b.X_holdout),
                flat(b.X_test), flat(b.X_test_triggered), "black box")
    quality_row(out, "digits clean model, seed 0", b.clean_model, b.X_holdout, b.X_test, b.X_test_triggered,
                "no backdoor to find")
    s = benches["signs", 0]
    quality_row(out, "signs CNN, backdoored, seed 0", s.backdoored_model, s.X_holdout, s.X_test, s.X_test_triggered,
                "paper (GTSRB): FAR 0% at FRR 1%")
    quality_row(out, "signs CNN, backdoored, seed 0, clip_range=None", s.backdoored_model, s.X_holdout, s.X_test,
                s.X_test_triggered, clip_range=None)
    out("  FRR: clean test images flagged; FAR: triggered test images accepted")


def timed(fn):
    """Wall-clock and CPU (process) seconds of one call.

    With one thread, CPU time is what the work costs even when other
    processes share the cores (wall time then also counts waiting).
    """
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(out, name, model, X_pool, X, n_perturbations, batch_size, repeats):
    strip = STRIPDetector(model, n_perturbations=n_perturbations, batch_size=batch_size,
                          random_state=0).fit(X_pool)
    adapter = ModelAdapter(model, batch_size=batch_size)

    def floor():
        for _ in range(n_perturbations):
            adapter.predict_proba(X, batch_size=batch_size)

    floor(), strip.score_samples(X[:50])  # warm-up
    t_strip, t_floor = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both
        t_floor.append(timed(floor))
        t_strip.append(timed(lambda: strip.score_samples(X)))
    t_strip, t_floor = np.array(t_strip), np.array(t_floor)
    rows = n_perturbations * len(X)
    wall = t_strip[:, 0].min() / t_floor[:, 0].min()
    cpu = np.median(t_strip[:, 1]) / np.median(t_floor[:, 1])
    out(f"  {name:<34} STRIP {t_strip[:, 0].min():.3f} s, {n_perturbations} x predict_proba "
        f"{t_floor[:, 0].min():.3f} s ({rows / t_floor[:, 0].min():,.0f} rows/s); "
        f"ratio {wall:.3f} (wall, best of {repeats}), {cpu:.3f} (CPU time, medians)")


def speed(out, bench, args):
    X = np.concatenate([bench.X_test, bench.X_test_triggered, bench.X_holdout])[: args.n_inputs]
    n, N, bs, r = args.n_inputs, args.n_perturbations, args.batch_size, args.repeats
    assert len(X) == n, "not enough digits for --n-inputs"
    out(f"== speed: N={N}, {n} inputs, batch {bs}; target ratio <= 1.10")
    compare(out, "digits SmallCNN (skorch net)", bench.backdoored_model, bench.X_holdout, X, N, bs, r)
    compare(out, "digits SmallCNN (bare nn.Module)", bench.backdoored_model.module_, bench.X_holdout, X, N, bs, r)
    compare(out, "digits MLPClassifier (black box)", poisoned_mlp(bench), flat(bench.X_holdout), flat(X), N, bs, r)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-perturbations", type=int, default=100)
    parser.add_argument("--n-inputs", type=int, default=1000)
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    args, out = parse(parser, "strip")
    torch.set_num_threads(args.threads)
    # numpy's BLAS (the MLPClassifier's forward pass) gets the same thread count
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    benches = {("digits", 0): make_backdoor_benchmark("digits", random_state=0)}
    if not args.no_quality:
        benches["digits", 1] = make_backdoor_benchmark("digits", random_state=1)
        benches["signs", 0] = make_backdoor_benchmark("signs", random_state=0)
        quality(out, benches)
    if not args.no_speed:
        speed(out, benches["digits", 0], args)
    out.save()


if __name__ == "__main__":
    main()

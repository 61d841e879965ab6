"""STRIP speed: time of ``score_samples`` relative to N plain ``predict_proba`` calls.

STRIP's floor is N forward passes per input. For N=100 perturbations and 1000
inputs, this script times

- STRIP: ``STRIPDetector.score_samples(X)`` (100 000 blended rows), and
- the floor: N calls of the adapter's ``predict_proba(X)`` on the same 1000
  inputs (100 000 rows),

with the same model, the same batch size (rows per forward pass) and the same
number of threads, and prints their ratio (the target is <= 1.10): of the best
of ``--repeats`` interleaved runs in wall-clock time, and of the median CPU
(process) times, which a machine shared with other jobs disturbs less.

Run: ``python benchmarks/bench_strip.py [--threads 1] [--batch-size 1024]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from backdoorlearn import STRIPDetector, make_backdoor_benchmark
from backdoorlearn.models import ModelAdapter


def timed(fn):
    """Wall-clock and CPU (process) seconds of one call.

    With one thread, CPU time is what the work costs even when other
    processes share the cores (wall time then also counts waiting).
    """
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def compare(name, model, X_pool, X, n_perturbations, batch_size, repeats):
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
    print(f"{name:<34} N={n_perturbations} inputs={len(X)} batch={batch_size}: "
          f"STRIP {t_strip[:, 0].min():.3f} s, {n_perturbations} x predict_proba "
          f"{t_floor[:, 0].min():.3f} s ({rows / t_floor[:, 0].min():,.0f} rows/s); "
          f"ratio {wall:.3f} (wall, best of {repeats}), {cpu:.3f} (CPU time, medians)")
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n-perturbations", type=int, default=100)
    parser.add_argument("--n-inputs", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # numpy's BLAS (the MLPClassifier's forward pass) gets the same thread count
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)

    bench = make_backdoor_benchmark("digits", random_state=0)
    X = np.concatenate([bench.X_test, bench.X_test_triggered, bench.X_holdout])[: args.n_inputs]
    n, N, bs, r = args.n_inputs, args.n_perturbations, args.batch_size, args.repeats
    assert len(X) == n, "not enough digits for --n-inputs"

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s) for torch and BLAS")
    compare("digits SmallCNN (skorch net)", bench.backdoored_model, bench.X_holdout, X, N, bs, r)
    compare("digits SmallCNN (bare nn.Module)", bench.backdoored_model.module_, bench.X_holdout, X, N, bs, r)

    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(
            bench.X_train.reshape(len(bench.X_train), -1), bench.y_train)
    flat = X.reshape(n, -1)
    compare("digits MLPClassifier (black box)", mlp, bench.X_holdout.reshape(len(bench.X_holdout), -1),
            flat, N, bs, r)


if __name__ == "__main__":
    main()

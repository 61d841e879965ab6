"""How long the shared starting point takes: ``make_backdoor_benchmark``.

Every test, example and benchmark of the later defenses starts from it, so it
must stay well under a minute on 2 CPU cores. Prints one line per data set
with the wall time and the quality of both models, measured in this run.

    python benchmarks/bench_foundation.py [--seeds 0 1 2]
"""

import argparse
import time

from backdoorlearn.datasets import make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "signs"])
    args = parser.parse_args()
    print(f"{'dataset':8s} {'seed':>4s} {'seconds':>8s} {'bd acc':>7s} {'bd ASR':>7s} {'cl acc':>7s} {'cl ASR':>7s}")
    for dataset in args.datasets:
        for seed in args.seeds:
            t = time.perf_counter()
            b = make_backdoor_benchmark(dataset, random_state=seed)
            seconds = time.perf_counter() - t
            figures = []
            for model in (b.backdoored_model, b.clean_model):
                figures.append(clean_accuracy(b.y_test, model.predict(b.X_test)))
                figures.append(attack_success_rate(b.y_test, model.predict(b.X_test_triggered), b.target_label))
            print(f"{dataset:8s} {seed:4d} {seconds:8.1f} " + " ".join(f"{f:7.1%}" for f in figures))


if __name__ == "__main__":
    main()

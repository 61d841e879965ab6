"""How long the shared starting point takes: ``make_backdoor_benchmark``.

Every test, example and benchmark of the defenses starts from it. Prints one
line per data set and seed with the wall time and the quality of both
models (clean accuracy and attack success, on the clean and the triggered
test set).

    python benchmarks/bench_foundation.py [--seeds 0 1 2] [--threads N]
"""

import argparse
import time

import torch
from _report import parse

from backdoorlearn.datasets import make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "signs"])
    parser.add_argument("--threads", type=int, default=None)
    args, out = parse(parser, "foundation")
    if args.threads:
        torch.set_num_threads(args.threads)
    out(f"{'dataset':8s} {'seed':>4s} {'seconds':>8s} {'bd acc':>7s} {'bd ASR':>7s} {'cl acc':>7s} {'cl ASR':>7s}")
    for dataset in args.datasets:
        for seed in args.seeds:
            t = time.perf_counter()
            b = make_backdoor_benchmark(dataset, random_state=seed)
            seconds = time.perf_counter() - t
            figures = []
            for model in (b.backdoored_model, b.clean_model):
                figures.append(clean_accuracy(b.y_test, model.predict(b.X_test)))
                figures.append(attack_success_rate(b.y_test, model.predict(b.X_test_triggered), b.target_label))
            out(f"{dataset:8s} {seed:4d} {seconds:8.1f} " + " ".join(f"{f:7.1%}" for f in figures))
    out("bd: the backdoored model, cl: the clean model; acc: clean accuracy, ASR: attack success (test sets)")
    out.save()


if __name__ == "__main__":
    main()

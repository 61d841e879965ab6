"""AntiBackdoorLearner on the zoo's poisoned training sets, at 1 and 2 torch threads.

For every infected single-trigger all-to-one entry of the chosen split (BadNets
patches, watermarks and blends), AntiBackdoorLearner trains the entry's own
architecture (the zoo's recipe, default ABL settings: nothing tuned per entry)
on the entry's poisoned training set, once per thread count. Printed per
entry and thread count: clean accuracy on the entry's test set against the same
network trained by the zoo's recipe on the training rows that carry no trigger
(the "clean net"), attack success of the entry's trigger, and isolation
precision (the share of the isolated rows that were poisoned). The summary
counts the patch entries that meet issue 13's targets at every thread count
(attack success <= 10%, clean accuracy within 3 points of the clean net,
isolation precision >= 90%); the other triggers are reported beside.

    python benchmarks/bench_abl_zoo.py [--split held-out] [--data digits] [--threads 1 2] [--resume F]

``--resume`` keeps per-entry results in a JSON file (entries found there are
not re-run); ``--report-only`` prints its table.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _report import parse

from backdoorlearn import AntiBackdoorLearner
from backdoorlearn.datasets import load_zoo_model, zoo_specs
from backdoorlearn.datasets._zoo import _RECIPES, _train
from backdoorlearn.metrics import clean_accuracy
from backdoorlearn.models import MLP

TARGET = dict(asr=0.10, accuracy_drop=0.03, precision=0.90)


def _module_params(zm):
    cls, kwargs = _RECIPES[zm.spec.data, zm.spec.arch][:2]
    shape = zm.X_test.shape[1:]
    first = {"input_shape": tuple(shape)} if cls is MLP else {"in_channels": shape[0]}
    return cls, {**first, "n_classes": zm.n_classes, **kwargs}


def _clean_reference(zm):
    """Clean accuracy of the entry's architecture trained (zoo recipe) on the rows with no trigger."""
    keep = ~(zm.truth.poison_mask | zm.truth.cover_mask)
    net = _train(zm.spec, zm.truth.X_train[keep], zm.truth.y_train[keep], zm.X_test.shape[1:], zm.n_classes,
                 seed=zm.spec.seed, verbose=0)
    return clean_accuracy(zm.y_test, net.predict(zm.X_test))


def run_entry(zm, threads):
    cls, params = _module_params(zm)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            abl = AntiBackdoorLearner(cls, module_params=params, random_state=0).fit(zm.truth.X_train,
                                                                                      zm.truth.y_train)
        seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(before)
    isolated = np.asarray(abl.isolated_indices_)
    return {"accuracy": clean_accuracy(zm.y_test, abl.predict(zm.X_test)),
            "attack_success": float(zm.attack_success_of(abl)[0]),
            "precision": float(np.mean(zm.truth.poison_mask[isolated])) if len(isolated) else 0.0,
            "n_isolated": int(len(isolated)), "n_poisoned": int(zm.truth.poison_mask.sum()),
            "seconds": seconds}


def meets(row, threads):
    r = row[str(threads)]
    return (r["attack_success"] <= TARGET["asr"] and row["clean_net"] - r["accuracy"] <= TARGET["accuracy_drop"]
            and r["precision"] >= TARGET["precision"])


def report(out, done, thread_counts):
    out("AntiBackdoorLearner (default settings) on each entry's poisoned training set; clean net = the same "
        "architecture trained by the zoo's recipe on the rows with no trigger. CA = clean accuracy on the "
        "entry's test set, ASR = attack success, prec = isolated rows that were poisoned (isolated/poisoned)")
    out(f"{'entry':38s} {'trigger':9s} {'clean net':>9s} | " +
        " | ".join(f"{t} thread(s): {'CA':>6s} {'ASR':>6s} {'prec':>5s} {'isolated':>8s} {'s':>5s}"
                   for t in thread_counts))
    for name, row in done.items():
        cells = []
        for t in thread_counts:
            r = row.get(str(t))
            cells.append(" " * 28 + "-" if r is None else
                         f"{'':12s}{r['accuracy']:6.1%} {r['attack_success']:6.1%} {r['precision']:5.0%} "
                         f"{r['n_isolated']:>3d}/{r['n_poisoned']:<4d} {r['seconds']:5.0f}")
        out(f"{name:38s} {row['trigger']:9s} {row['clean_net']:9.1%} | " + " | ".join(cells))
    out("")
    out(f"targets (issue 13): ASR <= {TARGET['asr']:.0%}, CA within {TARGET['accuracy_drop'] * 100:.0f} points of "
        f"the clean net, isolation precision >= {TARGET['precision']:.0%}, at every thread count")
    for kind in ("patch", "watermark", "blend"):
        rows = [r for r in done.values() if r["trigger"] == kind and all(str(t) in r for t in thread_counts)]
        if not rows:
            continue
        per = ", ".join(f"{t} thread(s) {sum(meets(r, t) for r in rows)}/{len(rows)}" for t in thread_counts)
        both = sum(all(meets(r, t) for t in thread_counts) for r in rows)
        out(f"  {kind:9s} met: {per}; at every thread count {both}/{len(rows)}"
            + ("  (issue 13's target: >= 90% of the patch entries)" if kind == "patch" else "  (reported)"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="held-out", choices=["held-out", "development"])
    parser.add_argument("--data", nargs="*", default=["digits"])
    parser.add_argument("--arch", nargs="*", default=None)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--resume", default=None)
    parser.add_argument("--report-only", action="store_true")
    args, out = parse(parser, "abl_zoo")
    done = json.loads(Path(args.resume).read_text()) if args.resume and Path(args.resume).exists() else {}
    if not args.report_only:
        specs = [s for s in zoo_specs(args.split, data=args.data, arch=args.arch, attack="all-to-one")
                 if len(s.triggers) == 1]
        for spec in specs:
            row = done.setdefault(spec.name, {"trigger": spec.triggers[0][0]})
            zm = None
            for t in args.threads:
                if str(t) in row:
                    continue
                zm = zm or load_zoo_model(spec)
                row[str(t)] = run_entry(zm, t)
                if args.resume:
                    Path(args.resume).write_text(json.dumps(done))
            if "clean_net" not in row:
                zm = zm or load_zoo_model(spec)
                row["clean_net"] = _clean_reference(zm)
                if args.resume:
                    Path(args.resume).write_text(json.dumps(done))
            print(f"{spec.name}: done", flush=True)
    report(out, {k: v for k, v in done.items() if "clean_net" in v}, args.threads)
    out.save()


if __name__ == "__main__":
    main()

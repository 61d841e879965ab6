"""The defense pipeline a user runs, with no oracle, on the model zoo's held-out entries.

For every entry of the split, with only what a defender has (the model, its clean
``X_defender``/``y_defender``):

1. ``NeuralCleanse(random_state=0)`` over all labels (the defaults);
2. fed with that fitted NeuralCleanse, on the same model and data:
   ``Unlearner(nc, random_state=0, no_trigger="warn")`` (the model unchanged where
   NeuralCleanse flagged nothing), ``NeuronPruner(nc)``, ``ActivationFilter(model, nc)``,
   and ``Unlearner(nc, random_state=0)``, whose default ``no_trigger="fine-prune"`` repairs
   with FinePruner where NeuralCleanse flagged nothing (run only there: elsewhere it is the
   first Unlearner by construction); and, to show what Unlearner's fine-tuning does
   without any trigger, the same Unlearner with ``stamp_fraction=0`` (nothing stamped,
   also where NeuralCleanse flagged nothing);
3. ``FinePruner(random_state=0)`` (needs no trigger);
4. targeted ``BimodelClassifier(model, fine-pruned model, target_labels=nc.flagged_labels_)``
   (which cross-examines every input when NeuralCleanse flagged nothing).

The ground truth (triggers, targets) only scores the results, on the entry's clean test
images (never seen by any defense) and on those images stamped with each true trigger:
clean accuracy and attack success of each repaired model, the filter's false positive rate
on the clean test images and its false negative rate on each trigger's stamped images, and
for BBD the clean test images rejected and the stamped images given the trigger's target.
Every target of a two-target entry is counted on its own. Then one line per target of
issue 13 with the fraction of (entry, trigger) cases that meet it.

Run: ``python benchmarks/bench_pipeline.py [--split held-out] [--data digits] [--resume F]``;
``--report-only`` prints the table of a ``--resume`` file. The fitted NeuralCleanse of each
entry is cached beside the zoo's weights (``--nc-cache``), so that re-running the
downstream defenses does not re-run it.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from _report import parse
from backdoorlearn import (ActivationFilter, BimodelClassifier, FinePruner, NeuralCleanse, NeuronPruner, Trigger,
                           Unlearner)
from backdoorlearn.datasets import get_data_home, load_zoo_model, zoo_specs
from backdoorlearn.metrics import clean_accuracy

SCORED = ("all-to-one", "two-target", "source-specific")


def fitted_neural_cleanse(zm, cache):
    """The entry's ``NeuralCleanse(random_state=0)``, fitted once and cached as a pickle."""
    path = None if cache is None else Path(cache) / f"{zm.name}.pkl"
    if path is not None and path.exists():
        with path.open("rb") as f:
            nc, seconds = pickle.load(f)
        return nc, seconds
    t = time.perf_counter()
    nc = NeuralCleanse(random_state=0).fit(zm.model, zm.X_defender, zm.y_defender)
    seconds = time.perf_counter() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            pickle.dump((nc, seconds), f)
    return nc, seconds


def _repair_scores(zm, model):
    return {"accuracy": clean_accuracy(zm.y_test, model.predict(zm.X_test)),
            "attack_success": zm.attack_success_of(model)}


def run_entry(zm, nc, only=None, filter_params=None, known=None):
    """Every downstream defense of ``zm`` fed by ``nc``; ``only`` limits them to those names.

    ``known`` holds results of an earlier run of this entry (the plain Unlearner's is reused
    where the fallback variant is the same by construction).
    """
    X, y, model = zm.X_defender, zm.y_defender, zm.model
    out = {}

    def want(name):
        return only is None or name in only

    def timed(name, fn):
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
        result["seconds"] = time.perf_counter() - t
        result["warnings"] = sorted({type(w.message).__name__ for w in caught
                                     if not issubclass(w.category, (DeprecationWarning, FutureWarning))})
        out[name] = result

    fine_pruned = {}

    def fine_prune():
        fp = FinePruner(random_state=0).fit(model, X, y)
        fine_pruned["model"] = fp.repaired_model_
        return _repair_scores(zm, fp.repaired_model_)

    def unlearn():
        u = Unlearner(nc, random_state=0, no_trigger="warn").fit(model, X, y)
        return _repair_scores(zm, u.repaired_model_)

    def unlearn_or_fine_prune():
        if len(nc.flagged_labels_):  # no_trigger is unused when there is a trigger: the plain Unlearner's result
            return dict({**(known or {}), **out}["Unlearner"], ran=False)
        u = Unlearner(nc, random_state=0).fit(model, X, y)  # no_trigger="fine-prune", the default
        return dict(_repair_scores(zm, u.repaired_model_), ran=True)

    def unlearn_no_trigger():
        # stamp_fraction=0: nothing is stamped, so any trigger gives the same fine-tuning; a
        # placeholder where NeuralCleanse flagged nothing keeps the fallback out of it
        triggers = nc if len(nc.flagged_labels_) else Trigger.patch(X.shape[1:], size=1)
        u = Unlearner(triggers, stamp_fraction=0.0, random_state=0).fit(model, X, y)
        return _repair_scores(zm, u.repaired_model_)

    def neuron_prune():
        p = NeuronPruner(nc).fit(model, X, y)
        return dict(_repair_scores(zm, p.repaired_model_), layer=p.layer_, n_pruned=len(p.pruned_units_),
                    budget_reached=bool(p.budget_reached_))

    def activation_filter():
        filt = ActivationFilter(model, nc, **(filter_params or {})).fit(X)
        fpr = float(np.mean(filt.predict(zm.X_test) == 1))  # predict: 1 flagged, 0 accepted
        fnr = [float(np.mean(filt.predict(zm.triggered_test(k)[0]) == 0)) for k in range(len(zm.truth.triggers))]
        return {"fpr": fpr, "fnr": fnr, "n_triggers": len(filt.triggers_)}

    def bbd():
        targets = list(nc.flagged_labels_)
        bbd = BimodelClassifier(model, fine_pruned["model"], target_labels=targets).fit(X, y)
        clean = bbd.predict(zm.X_test)
        given = []
        for k, target in enumerate(zm.truth.target_labels):
            given.append(float(np.mean(bbd.predict(zm.triggered_test(k)[0]) == target)))
        return {"clean_rejected": float(np.mean(clean == bbd.reject_label_)), "given_target": given,
                "mode": "targeted" if targets else "untargeted",
                "clean_accuracy": clean_accuracy(zm.y_test, clean)}

    if want("FinePruner") or want("BBD"):
        timed("FinePruner", fine_prune)
    for name, fn in (("Unlearner", unlearn), ("Unlearner fallback", unlearn_or_fine_prune),
                     ("Unlearner stamp 0", unlearn_no_trigger),
                     ("NeuronPruner", neuron_prune), ("ActivationFilter", activation_filter), ("BBD", bbd)):
        if want(name):
            timed(name, fn)
    return out


def run(spec, cache, done, only, filter_params=None):
    zm = load_zoo_model(spec)
    nc, nc_seconds = fitted_neural_cleanse(zm, cache)
    entry = dict(done or {})
    entry.update(name=spec.name, data=spec.data, arch=spec.arch, attack=spec.attack, trigger=spec.trigger_kind,
                 targets=list(spec.target_labels), accuracy=zm.clean_accuracy, attack_success=zm.attack_success,
                 flagged=[int(v) for v in nc.flagged_labels_], nc_seconds=nc_seconds)
    todo = [n for n in (only or ["FinePruner", "Unlearner", "Unlearner fallback", "Unlearner stamp 0", "NeuronPruner",
                                 "ActivationFilter", "BBD"])
            if n not in entry]
    if todo:
        entry.update(run_entry(zm, nc, only=todo, filter_params=filter_params, known=entry))
    return entry


# ---------------------------------------------------------------------- report
def cases(rows):
    """(row, trigger index) of every scored trigger: each target of a two-target entry on its own."""
    return [(r, k) for r in rows if r["attack"] in SCORED for k in range(len(r["targets"]))]


def criteria():
    """(name, target fraction, test on (row, k)) of each target of issue 13."""
    def repair(name, asr, lost):
        return lambda r, k: (r[name]["attack_success"][k] <= asr and r["accuracy"] - r[name]["accuracy"] <= lost)

    return [
        ("Unlearner fed by NC, no_trigger='warn': ASR <= 5%, <= 3 pts", 0.9, repair("Unlearner", 0.05, 0.03)),
        ("  same, no_trigger='fine-prune' (the default)", 0.9,
         repair("Unlearner fallback", 0.05, 0.03)),
        ("  same fine-tuning, stamp_fraction=0 (no trigger)", None, repair("Unlearner stamp 0", 0.05, 0.03)),
        ("FinePruner: ASR <= 5%, <= 3 pts lost", 0.9, repair("FinePruner", 0.05, 0.03)),
        ("NeuronPruner fed by NC: ASR <= 10%, <= 5 pts lost", 0.8, repair("NeuronPruner", 0.10, 0.05)),
        ("ActivationFilter fed by NC: FNR <= 5% at FPR ~5%", 0.8,
         lambda r, k: r["ActivationFilter"]["fnr"][k] <= 0.05),
        ("targeted BBD: clean rejected <= 2%, given target <= 1%", 0.9,
         lambda r, k: r["BBD"]["clean_rejected"] <= 0.02 and r["BBD"]["given_target"][k] <= 0.01),
    ]


def table(report, rows):
    report(f"{'entry':<38} {'k':>1} {'NC':<7} {'acc':>5} {'ASR':>5} | {'Unlearner':>11} | {'FinePruner':>11} | "
           f"{'NeuronPruner':>11} {'layer':<13} | {'AF FPR':>6} {'FNR':>5} | {'BBD rej':>7} {'tgt':>5}")

    def pair(d, k):
        return f"{d['accuracy']:.1%}/{d['attack_success'][k]:.0%}"

    for r in rows:
        for k in range(len(r["targets"])):
            n, u, f, af, b = (r[x] for x in ("NeuronPruner", "Unlearner", "FinePruner", "ActivationFilter", "BBD"))
            layer = (n["layer"] or "-") + ("!" if n["budget_reached"] else "")
            report(f"{r['name'] if k == 0 else '':<38} {k:>1} {','.join(map(str, r['flagged'])) or '-':<7} "
                   f"{r['accuracy']:>5.1%} {r['attack_success'][k]:>5.0%} | {pair(u, k):>11} | {pair(f, k):>11} | "
                   f"{pair(n, k):>11} {layer[:13]:<13} | {af['fpr']:>6.1%} {af['fnr'][k]:>5.1%} | "
                   f"{b['clean_rejected']:>7.1%} {b['given_target'][k]:>5.1%}")


def summary(report, rows):
    infected = cases(rows)
    report()
    report(f"{'target (issue 13), over the infected (entry, trigger) cases':<60} {'reached':<14} goal")
    for name, goal, ok in criteria():
        try:
            hits = [bool(ok(r, k)) for r, k in infected]
        except KeyError:  # a --resume file from before this defense was added
            hits = None
        frac = "not run" if hits is None else f"{sum(hits)}/{len(hits)} = {np.mean(hits):.0%}" if hits else "-"
        report(f"{name:<60} {frac:<14} " + ("(reported)" if goal is None else f">= {goal:.0%}"))
    flagged = [r["targets"][k] in r["flagged"] for r, k in infected]
    if flagged:
        report(f"{'(NeuralCleanse flagged the case target)':<60} {sum(flagged)}/{len(flagged)}")
    clean = [r for r in rows if r["attack"] == "clean"]
    if clean:
        report()
        report("clean entries: accuracy lost by each repair (median, max); ActivationFilter FPR; BBD clean rejected")
        for name in ("Unlearner", "Unlearner fallback", "Unlearner stamp 0", "FinePruner", "NeuronPruner"):
            lost = [r["accuracy"] - r[name]["accuracy"] for r in clean if name in r]
            if lost:
                report(f"  {name:<18} {np.median(lost):.1%}, {max(lost):.1%}")
        report(f"  ActivationFilter FPR (median, max) {np.median([r['ActivationFilter']['fpr'] for r in clean]):.1%}, "
               f"{max(r['ActivationFilter']['fpr'] for r in clean):.1%}")
        report(f"  BBD clean rejected (median, max) {np.median([r['BBD']['clean_rejected'] for r in clean]):.1%}, "
               f"{max(r['BBD']['clean_rejected'] for r in clean):.1%}")
    seconds = {n: sum(r[n]["seconds"] for r in rows) for n in ("FinePruner", "Unlearner", "NeuronPruner",
                                                               "ActivationFilter", "BBD")}
    report()
    report("wall time over all entries: NeuralCleanse " + f"{sum(r['nc_seconds'] for r in rows):.0f} s, "
           + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="held-out", choices=["held-out", "development"])
    parser.add_argument("--data", nargs="*", default=None, help="only these data sets")
    parser.add_argument("--arch", nargs="*", default=None, help="only these architectures")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--nc-cache", default=str(Path(get_data_home()) / "nc-pipeline"),
                        help="folder of the fitted NeuralCleanse pickles ('' for none)")
    parser.add_argument("--resume", default=None, help="JSON file of per-entry results (parts found are not re-run)")
    parser.add_argument("--redo", nargs="*", default=(), help="defenses to re-run although the --resume file has them")
    parser.add_argument("--neuron-ranking", default=None, choices=["standardized", "gap"],
                        help="ActivationFilter's neuron_ranking (default: its default)")
    parser.add_argument("--report-only", action="store_true", help="run nothing: print the --resume file's table")
    args, report = parse(parser, "bench_pipeline")
    if args.threads:
        torch.set_num_threads(args.threads)
    done = json.loads(Path(args.resume).read_text()) if args.resume and Path(args.resume).exists() else {}
    specs = zoo_specs(args.split, data=args.data, arch=args.arch)
    rows = []
    for spec in specs:
        redo = set(args.redo) | ({"Unlearner fallback", "Unlearner stamp 0"} if "Unlearner" in args.redo else set())
        entry = {k: v for k, v in done.get(spec.name, {}).items() if k not in redo}
        if not args.report_only:
            params = {} if args.neuron_ranking is None else {"neuron_ranking": args.neuron_ranking}
            entry = run(spec, args.nc_cache or None, entry, None, params)
            done[spec.name] = entry
            if args.resume:
                Path(args.resume).write_text(json.dumps(done))
            print(f"{spec.name}: done", flush=True)
        if "BBD" in entry:
            rows.append(entry)
    missing = "" if len(rows) == len(specs) else f", of the {len(specs)} selected: the others were not run"
    report(f"The no-oracle pipeline on the {args.split} zoo ({len(rows)} models{missing}). One line per trigger k; "
           "NC = labels NeuralCleanse flagged; acc/ASR = the model's clean accuracy and attack success; each repair "
           "shows its clean accuracy/attack success; NeuronPruner's layer ends in ! where the budget stopped it; "
           "AF = ActivationFilter (FPR on clean test images, FNR on stamped ones); BBD = clean test images rejected, "
           "stamped images given the target")
    table(report, rows)
    summary(report, rows)
    report.save()


if __name__ == "__main__":
    main()

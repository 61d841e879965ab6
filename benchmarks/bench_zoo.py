"""Neural Cleanse and STRIP on the model zoo's held-out entries, which no default was tuned on.

For every entry of the split (``backdoorlearn.datasets.zoo_specs``), with only what a
defender has (the model and its clean ``X_defender``/``y_defender``):

- Neural Cleanse over all labels (``NeuralCleanse(random_state=0)``, the defaults): the
  labels its decision flags, the true targets among them, the clean labels among them,
  the paper's MAD anomaly index and the labels the paper's rule (index > 2, below the
  median) would flag, wall time and label-steps (optimization steps summed over labels);
- for source-specific entries, Neural Cleanse over all (source, target) pairs
  (``pairs="all"``): whether the true pair is flagged, and how many other pairs are;
- STRIP (``STRIPDetector(model, random_state=0)`` fitted on ``X_defender``, threshold at
  1% false rejections): the false acceptance rate of each trigger on the triggered test
  images and the false rejection rate on the clean test images.

The ground truth (triggers, targets, sources) only scores the answers. Then one line per
target of the issue with the fraction of entries that meet it.

Run: ``python benchmarks/bench_zoo.py [--split held-out] [--data digits] [--skip-pairs]``
(the whole held-out set takes about an hour on 2 CPU cores once the zoo is trained; the
zoo trains once and is cached, see ``get_data_home``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _report import parse
from backdoorlearn import NeuralCleanse, STRIPDetector
from backdoorlearn.datasets import load_zoo_model, zoo_specs
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate

PAPER_THRESHOLD = 2.0


def paper_flags(nc):
    """Labels (or pairs) the paper's rule flags: MAD index above 2 and a norm below the median."""
    norms = nc.l1_norms_
    below = norms < np.median(norms)
    idx = np.flatnonzero(below & (nc.anomaly_indices_ > PAPER_THRESHOLD))
    return idx


def run_entry(spec, skip_pairs, skip_strip, out=None):
    """The entry's results; parts already in ``out`` (from ``--resume``) are not run again."""
    zm = load_zoo_model(spec)
    out = dict(out or {})
    out.update(name=spec.name, data=spec.data, arch=spec.arch, attack=spec.attack,
               trigger=spec.trigger_kind, targets=list(spec.target_labels),
               clean_accuracy=zm.clean_accuracy, attack_success=zm.attack_success)
    if "flagged" not in out:
        t = time.perf_counter()
        nc = NeuralCleanse(random_state=0).fit(zm.model, zm.X_defender, zm.y_defender)
        out["nc_seconds"] = time.perf_counter() - t
        out["nc_label_steps"] = int(nc.n_steps_.sum())
        out["flagged"] = [int(v) for v in nc.flagged_labels_]
        out["paper_index"] = float(nc.anomaly_index_)
        out["paper_flagged"] = [int(nc.labels_[i]) for i in paper_flags(nc)]
        out["l1_norms"] = nc.l1_norms_.tolist()
    if spec.attack == "source-specific" and not skip_pairs and "flagged_pairs" not in out:
        t = time.perf_counter()
        ncp = NeuralCleanse(random_state=0, pairs="all").fit(zm.model, zm.X_defender, zm.y_defender)
        out["pairs_seconds"] = time.perf_counter() - t
        out["pairs_label_steps"] = int(ncp.n_steps_.sum())
        out["true_pairs"] = [[s, spec.target_labels[0]] for s in spec.source_labels]
        out["flagged_pairs"] = [list(map(int, p)) for p in ncp.flagged_pairs_]
        out["paper_flagged_pairs"] = [ncp.pairs_[i].tolist() for i in paper_flags(ncp)]
        out["pair_l1_norms"] = ncp.l1_norms_.tolist()
    if not skip_strip and "strip_far" not in out:
        out["strip_frr"], out["strip_far"] = strip_rates(zm)
    return out


def strip_rates(zm, **params):
    """STRIP fitted on the defender's images: FRR on the clean test images, FAR of each trigger."""
    strip = STRIPDetector(zm.model, random_state=0, **params).fit(zm.X_defender)
    frr = false_rejection_rate(np.zeros(len(zm.X_test)), strip.predict(zm.X_test))
    fars = []
    for k in range(len(zm.truth.triggers)):
        X_t, _ = zm.triggered_test(k)
        fars.append(false_acceptance_rate(np.ones(len(X_t)), strip.predict(X_t)))
    return frr, fars


def _complete(entry, spec, skip_pairs, skip_strip):
    """Whether ``entry`` holds every part that ``run_entry`` would compute for ``spec``."""
    needed = ["flagged"] + ([] if skip_strip else ["strip_far"])
    if spec.attack == "source-specific" and not skip_pairs:
        needed.append("flagged_pairs")
    return all(k in entry for k in needed)


def fmt_labels(values):
    return "[" + ",".join(str(v) for v in values) + "]"


def table(report, rows):
    report(f"{'entry':<40} {'trigger':<44} {'NC flags':<9} {'hit':>4} {'clean':>5} "
           f"{'paper idx':>9} {'paper flags':<11} {'STRIP FAR':<13} {'FRR':>5} {'NC s':>6} {'steps':>6}")
    for r in rows:
        targets = set(r["targets"]) if r["attack"] in ("all-to-one", "two-target") else set()
        flagged = set(r["flagged"])
        hit = f"{len(flagged & targets)}/{len(targets)}" if targets else "-"
        clean = len(flagged - targets)
        far = ",".join(f"{v:.1%}" for v in r.get("strip_far", [])) or "-"
        frr = f"{r['strip_frr']:.1%}" if "strip_frr" in r else "-"
        report(f"{r['name']:<40} {r['trigger'][:44]:<44} {fmt_labels(r['flagged']):<9} {hit:>4} {clean:>5} "
               f"{r['paper_index']:>9.2f} {fmt_labels(r['paper_flagged']):<11} {far:<13} {frr:>5} "
               f"{r['nc_seconds']:>6.1f} {r['nc_label_steps']:>6}")
        if "true_pairs" in r:
            true = {tuple(p) for p in r["true_pairs"]}
            got = {tuple(p) for p in r["flagged_pairs"]}
            paper = {tuple(p) for p in r["paper_flagged_pairs"]}
            report(f"{'  pairs=all':<40} true pair {sorted(true)} flagged: {bool(true & got)}, "
                   f"other pairs flagged: {len(got - true)}; paper rule: {bool(true & paper)}, "
                   f"{len(paper - true)} other; {r['pairs_seconds']:.0f} s, {r['pairs_label_steps']} steps")


def summary(report, rows):
    def frac(hits):
        hits = list(hits)
        return f"{sum(hits)}/{len(hits)} = {np.mean(hits):.0%}" if hits else "-"

    a2o = [r for r in rows if r["attack"] == "all-to-one"]
    two = [r for r in rows if r["attack"] == "two-target"]
    clean = [r for r in rows if r["attack"] == "clean"]
    src = [r for r in rows if r["attack"] == "source-specific" and "true_pairs" in r]
    report()
    report("target (issue 12)                                  decision      paper's rule")
    for label, sel, key in [
        ("all-to-one: true target flagged (>= 90%)", a2o, "flagged"),
        ("two-target: each target flagged (>= 90%)", two, "flagged"),
    ]:
        ours = [t in r[key] for r in sel for t in r["targets"]]
        paper = [t in r["paper_flagged"] for r in sel for t in r["targets"]]
        report(f"{label:<50} {frac(ours):<13} {frac(paper)}")
    report(f"{'clean models with a flag (<= 10%)':<50} {frac(bool(r['flagged']) for r in clean):<13} "
           f"{frac(bool(r['paper_flagged']) for r in clean)}")
    infected = a2o + two
    ours = sum(len(set(r["flagged"]) - set(r["targets"])) for r in infected)
    paper = sum(len(set(r["paper_flagged"]) - set(r["targets"])) for r in infected)
    n_clean_labels = sum(10 - len(r["targets"]) for r in infected)
    report(f"{'clean labels flagged in infected models':<50} {ours}/{n_clean_labels:<10} {paper}/{n_clean_labels}")
    if src:
        ours = [bool({tuple(p) for p in r["true_pairs"]} & {tuple(p) for p in r["flagged_pairs"]}) for r in src]
        paper = [bool({tuple(p) for p in r["true_pairs"]} & {tuple(p) for p in r["paper_flagged_pairs"]})
                 for r in src]
        report(f"{'source-specific: true pair flagged (>= 80%)':<50} {frac(ours):<13} {frac(paper)}")
    strip_rows = [r for r in a2o + two + clean if "strip_far" in r]
    if strip_rows:
        patch_blend = [r for r in a2o + two if "strip_far" in r]
        report(f"{'STRIP: FAR <= 2% at FRR 1%, patch/blend/watermark (>= 90%)':<50} "
               f"{frac(max(r['strip_far']) <= 0.02 for r in patch_blend)}")
        src_strip = [r for r in rows if r["attack"] == "source-specific" and "strip_far" in r]
        if src_strip:
            report(f"{'STRIP FAR on source-specific (no target)':<50} "
                   + ", ".join(f"{r['strip_far'][0]:.0%}" for r in src_strip))
        report(f"{'STRIP FRR on the clean test sets (median)':<50} "
               f"{np.median([r['strip_frr'] for r in strip_rows]):.1%}")
    times = [r["nc_seconds"] for r in rows]
    report(f"{'Neural Cleanse wall time per model (median, max)':<50} {np.median(times):.0f} s, {max(times):.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="held-out", choices=["held-out", "development"])
    parser.add_argument("--data", nargs="*", default=None, help="only these data sets")
    parser.add_argument("--arch", nargs="*", default=None, help="only these architectures")
    parser.add_argument("--skip-pairs", action="store_true", help="no pairs mode on source-specific entries")
    parser.add_argument("--skip-strip", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--resume", default=None,
                        help="JSON file of per-entry results: the parts found there are not run again "
                             "(delete the file after changing the code)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: print the table of the entries the --resume file holds (those with "
                             "every part this command would run)")
    args, report = parse(parser, "bench_zoo")
    if args.threads:
        torch.set_num_threads(args.threads)
    done = json.loads(Path(args.resume).read_text()) if args.resume and Path(args.resume).exists() else {}
    rows = []
    specs = zoo_specs(args.split, data=args.data, arch=args.arch)
    for spec in specs:
        if args.report_only:
            entry = done.get(spec.name, {})
            if _complete(entry, spec, args.skip_pairs, args.skip_strip):
                rows.append(entry)
            continue
        done[spec.name] = run_entry(spec, args.skip_pairs, args.skip_strip, done.get(spec.name))
        if args.resume:
            Path(args.resume).write_text(json.dumps(done))
        print(f"{spec.name}: done", flush=True)
        rows.append(done[spec.name])
    missing = "" if len(rows) == len(specs) else f", of the {len(specs)} selected: the others were not run"
    report(f"Neural Cleanse and STRIP on the {args.split} zoo ({len(rows)} models{missing}); "
           "NC flags = the labels NeuralCleanse flags, hit = true targets among them, clean = clean labels "
           "among them; paper idx / flags = the MAD anomaly index and the paper's rule")
    table(report, rows)
    summary(report, rows)
    report.save()


if __name__ == "__main__":
    main()

"""Unlearner settings compared on the development zoo, each entry fed by its own NeuralCleanse.

This is where Unlearner's defaults are chosen: only development entries and the
embedded benchmarks, never the held-out entries that ``bench_pipeline.py`` reports.
Every infected entry's ``NeuralCleanse(random_state=0)`` (cached as in
``bench_pipeline.py``) feeds ``Unlearner(nc, random_state=0, no_trigger="warn",
**variant)``: where NeuralCleanse flagged nothing the model stays as it was (the
FinePruner fallback is scored from FinePruner's own benchmark, ``bench_lr_check.py``).
A case (entry, trigger) meets the target when its attack success on the test set is
<= 5% and the clean accuracy lost is <= 3 points (issue 13's Unlearner target).
Variants run with the learning-rate check off (``validation_fraction=0``) unless
they name it. ``--embedded`` adds the embedded digits and signs benchmarks
(``make_backdoor_benchmark(random_state=0)``), unlearned with the true trigger and
with their NeuralCleanse's.

    python benchmarks/bench_unlearner_dev.py [--data digits mnist5k signs] [--variants ...] [--embedded]
                                             [--resume F]

``--resume`` keeps per-entry results in a JSON file (variants found there are not
re-run); ``--report-only`` prints its table.
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _report import parse
from bench_pipeline import fitted_neural_cleanse

from backdoorlearn import FinePruner, NeuralCleanse, Trigger, Unlearner
from backdoorlearn.datasets import get_data_home, load_zoo_model, make_backdoor_benchmark, zoo_specs
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

#: The plain fine-tuning of Unlearner before it took FinePruner's (constant-rate AdamW, 20 epochs).
_PLAIN = dict(fine_tune_epochs=20, lr=5e-3, lr_schedule="constant", label_smoothing=0.0, max_shift=0, noise_std=0.0,
              weight_decay=0.0)

#: FinePruner's fine-tuning (its defaults), for Unlearner.
_FP_RECIPE = {k: v for k, v in FinePruner().get_params().items() if k in _PLAIN or k == "noise_prob"}

#: name -> Unlearner parameters besides the triggers (None: the reversed masks binarized).
VARIANTS = {
    "lr 2e-3": dict(_PLAIN, lr=2e-3),
    "lr 5e-3": dict(_PLAIN, lr=5e-3),
    "lr 1e-2": dict(_PLAIN, lr=1e-2),
    "stamp 0.4, lr 2e-3": dict(_PLAIN, stamp_fraction=0.4, lr=2e-3),
    "stamp 0.3, lr 5e-3": dict(_PLAIN, stamp_fraction=0.3, lr=5e-3),
    "stamp 0.4, lr 5e-3": dict(_PLAIN, stamp_fraction=0.4, lr=5e-3),
    "stamp 0.2 per trigger, lr 2e-3": "per-trigger",
    "40 epochs, lr 2e-3": dict(_PLAIN, fine_tune_epochs=40, lr=2e-3),
    "40 epochs, lr 5e-3": dict(_PLAIN, fine_tune_epochs=40, lr=5e-3),
    "binarized masks, lr 2e-3": "binarized",
    "plain, learning-rate check (old default)": dict(_PLAIN, validation_fraction=0.2),
    "cosine, smoothing, shift": dict(_PLAIN, lr=5e-3, lr_schedule="cosine", label_smoothing=0.1, max_shift=1,
                                     validation_fraction=0.2),
    "FinePruner's recipe (the default)": dict(_FP_RECIPE, validation_fraction=0.2),
    "FinePruner's recipe, stamp 0": dict(_FP_RECIPE, stamp_fraction=0.0, validation_fraction=0.2),
    "FinePruner's recipe, 40 epochs": dict(_FP_RECIPE, fine_tune_epochs=40, validation_fraction=0.2),
}
TARGET_ASR, TARGET_DROP = 0.05, 0.03


def _params(variant, nc):
    """The variant's Unlearner parameters, the learning-rate check off unless it names it (None: not run)."""
    params = _variant_params(variant, nc)
    return None if params is None else {"validation_fraction": 0.0, "no_trigger": "warn", **params}


def _variant_params(variant, nc):
    spec = VARIANTS[variant]
    flagged = list(nc.flagged_labels_)
    if spec == "per-trigger":
        return dict(_PLAIN, triggers=nc, stamp_fraction=min(0.6, 0.2 * max(1, len(flagged))), lr=2e-3)
    if spec == "binarized":
        if not flagged:
            return None
        triggers = {label: nc.reversed_triggers_[label] for label in flagged}
        return dict(triggers={label: Trigger((t.mask > 0.5 * t.mask.max()).astype(np.float32), t.pattern)
                              for label, t in triggers.items()}, **dict(_PLAIN, lr=2e-3))
    return dict(triggers=nc, **spec)


def _meets(row, variant):
    v = row.get(variant)
    if v is None:
        return None
    return [bool(a <= TARGET_ASR and row["accuracy"] - v["accuracy"] <= TARGET_DROP)
            for a in np.atleast_1d(v["attack_success"])]


def report(out, done, variants):
    out("Unlearner fed by each development entry's NeuralCleanse: cases (entry, trigger) with attack success "
        f"<= {TARGET_ASR:.0%} and <= {TARGET_DROP * 100:.0f} points of clean accuracy lost; '-': not run")
    embedded = {k: v for k, v in done.items() if k.startswith("_embedded")}
    done = {k: v for k, v in done.items() if not k.startswith("_embedded")}
    datas = sorted({row["data"] for row in done.values()})
    out(f"{'variant':42s} " + " ".join(f"{d:>9s}" for d in datas) + f" {'all':>9s}")
    for variant in variants:
        cells, hits, total, complete = [], 0, 0, True
        for d in datas:
            rows = [r for r in done.values() if r["data"] == d]
            met = [_meets(r, variant) for r in rows]
            if any(m is None and r["flagged"] for m, r in zip(met, rows)):
                cells.append(f"{'-':>9s}")
                complete = False
                continue
            h = sum(sum(m) for m in met if m)
            n = sum(len(r["targets"]) for r in rows)
            hits, total = hits + h, total + n
            cells.append(f"{f'{h}/{n}':>9s}")
        all_cell = f"{hits}/{total}" if complete else "-"
        out(f"{variant:42s} " + " ".join(cells) + f" {all_cell:>9s}")
    out("")
    out("per entry: targets, labels NeuralCleanse flagged, clean accuracy, then clean accuracy / attack success "
        "of each variant run")
    for name, row in done.items():
        parts = [f"{v}: {row[v]['accuracy']:.1%}/" + ",".join(f"{a:.0%}" for a in np.atleast_1d(row[v]['attack_success']))
                 for v in variants if v in row]
        out(f"  {name} targets {row['targets']} flagged {row['flagged']} acc {row['accuracy']:.1%}: "
            + "; ".join(parts))
    if embedded:
        out("")
        out("embedded benchmarks (make_backdoor_benchmark(random_state=0)): points of clean accuracy lost / attack "
            "success, unlearning the true trigger | the benchmark's NeuralCleanse's triggers")
        names = sorted(embedded)
        out(f"{'variant':42s} " + " ".join(f"{n.split('-', 1)[1]:>27s}" for n in names))
        for variant in variants:
            cells = []
            for n in names:
                pair = [embedded[n].get(f"{variant} | {t}") for t in ("true", "nc")]
                base = embedded[n]["accuracy"]
                text = "-" if None in pair else " | ".join(
                    f"{(base - r['accuracy']) * 100:+.1f}/{r['attack_success'][0]:.1%}" for r in pair)
                cells.append(f"{text:>27s}")
            out(f"{variant:42s} " + " ".join(cells))


def run_embedded(done, data, variants, resume):
    """Each variant on the embedded benchmark ``data``, with the true trigger and with its NeuralCleanse's."""
    b = make_backdoor_benchmark(data, random_state=0)
    nc = None
    row = done.setdefault(f"_embedded-{data}",
                          {"accuracy": clean_accuracy(b.y_test, b.backdoored_model.predict(b.X_test))})
    for variant in variants:
        for kind in ("true", "nc"):
            if f"{variant} | {kind}" in row:
                continue
            if nc is None:
                nc = NeuralCleanse(random_state=0).fit(b.backdoored_model, b.X_holdout)
            params = _params(variant, nc)
            if params is None:
                continue
            if kind == "true":
                params["triggers"] = b.trigger
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = Unlearner(random_state=0, **params).fit(b.backdoored_model, b.X_holdout,
                                                                b.y_holdout).repaired_model_
            row[f"{variant} | {kind}"] = {
                "accuracy": clean_accuracy(b.y_test, model.predict(b.X_test)),
                "attack_success": [float(attack_success_rate(b.y_test, model.predict(b.X_test_triggered),
                                                             b.target_label))]}
            if resume:
                Path(resume).write_text(json.dumps(done))
    print(f"embedded {data}: done", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="*", default=["digits", "mnist5k", "signs"])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nc-cache", default=str(Path(get_data_home()) / "nc-pipeline"))
    parser.add_argument("--resume", default=None)
    parser.add_argument("--embedded", action="store_true", help="also the embedded digits and signs benchmarks")
    parser.add_argument("--report-only", action="store_true")
    args, out = parse(parser, "unlearner_dev")
    torch.set_num_threads(args.threads)
    done = json.loads(Path(args.resume).read_text()) if args.resume and Path(args.resume).exists() else {}
    if not args.report_only:
        for spec in zoo_specs("development", data=args.data):
            if spec.attack == "clean":
                continue
            zm = load_zoo_model(spec)
            nc, _ = fitted_neural_cleanse(zm, args.nc_cache)
            row = done.setdefault(spec.name, {"data": spec.data, "targets": list(spec.target_labels),
                                              "flagged": [int(x) for x in nc.flagged_labels_],
                                              "accuracy": zm.clean_accuracy})
            for variant in args.variants:
                params = _params(variant, nc)
                if variant in row or params is None:
                    continue
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = Unlearner(random_state=0, **params).fit(zm.model, zm.X_defender,
                                                                    zm.y_defender).repaired_model_
                row[variant] = {"accuracy": clean_accuracy(zm.y_test, model.predict(zm.X_test)),
                                "attack_success": np.atleast_1d(zm.attack_success_of(model)).tolist(),
                                "seconds": time.perf_counter() - t}
                if args.resume:
                    Path(args.resume).write_text(json.dumps(done))
            print(f"{spec.name}: done", flush=True)
        if args.embedded:
            for data in ("digits", "signs"):
                run_embedded(done, data, args.variants, args.resume)
    report(out, done, args.variants)
    out.save()


if __name__ == "__main__":
    main()

"""Neural Cleanse throughput: labels per chunk chosen by measurement, and labels that stop when settled.

Prints, in one run, on the digits benchmark's backdoored model (1x8x8,
``make_backdoor_benchmark("digits", random_state=0)``, the tests' model), on
one MNIST-5k (1x28x28) and one signs (3x32x32) development zoo model:

1. speed: ``NeuralCleanse`` with all labels batched, ``label_chunk_size="auto"``
   (the timing probe; the chosen K and the probe's time per label-step are
   printed) and ``label_chunk_size=None`` (the forward budget), against
   ``label_chunk_size=1`` (the one-at-a-time reference), same steps and seeds,
   best of ``--repeats`` alternating runs each, in reversed order every other
   repeat (the first auto run of a model pays for the probe; the others find
   it cached), the largest difference in the L1 norms, and the
   ratio of the one-at-a-time time to each batched time;
2. settled-label stopping: label-steps and wall time with
   ``settle_patience=None`` (off) and ``--settle-patience``, the labels each
   flags, side by side.

Neural Cleanse on a 28x28 or 32x32 model takes minutes on a CPU: those runs
cap the steps at ``--steps`` (digits runs the default 100) to keep the whole
benchmark near 15 minutes on a 2-core CPU.

With ``--settle-zoo SPLIT`` instead, the settled-label comparison at the
default steps on every entry of the zoo split (``--zoo-data`` to restrict
it), written to ``results/nc_settle_<split>.txt``: how the default of
``settle_patience`` was decided (on the development split only).

    python benchmarks/bench_nc_speed.py [--device cpu|cuda] [--threads N] [--steps 30] [--repeats 2]
        [--digits-repeats 5]
        [--settle-patience 10] [--settle-zoo development|held-out [--zoo-data digits mnist5k signs]]
"""

import argparse
import time

import numpy as np
import torch
from _report import RESULTS, Report, parse

from backdoorlearn import NeuralCleanse
from backdoorlearn.datasets import load_zoo_model, make_backdoor_benchmark, zoo_specs
from backdoorlearn.models import _batching

MNIST_ENTRY = "dev-mnist5k-small-cnn-patch"
SIGNS_ENTRY = "dev-signs-small-cnn-patch"


def fit(model, X, y, device, **params):
    t = time.perf_counter()
    nc = NeuralCleanse(random_state=0, device=device, **params).fit(model, X, y)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return nc, time.perf_counter() - t


def speed(out, name, model, X, y, device, steps, repeats, settle_patience):
    _batching.clear_cache()  # the first auto run pays for its probe
    best = {}
    runs = {}
    for r in range(repeats):
        # the order is reversed every other repeat, so that no mode always runs right after another
        for chunk in (1, None, "auto") if r % 2 == 0 else ("auto", None, 1):
            nc, t = fit(model, X, y, device, steps=steps, label_chunk_size=chunk, settle_patience=None)
            best[chunk] = min(best.get(chunk, np.inf), t)
            runs[chunk] = nc
    ref = runs[1]
    auto = runs["auto"]
    probe = ", ".join(f"K={k}: {1e3 * v:.2f}" for k, v in sorted(auto.label_chunk_timings_.items()))
    out(f"  [{name}] {len(ref.labels_)} labels, {len(X)} defender images, steps cap {steps}, "
        f"best of {repeats} runs each")
    out(f"    probe, ms per label-step: {probe}")
    for chunk, what in ((1, "label_chunk_size=1   "), (None, "label_chunk_size=None"), ("auto", 'label_chunk_size="auto"')):
        nc = runs[chunk]
        diff = np.abs(nc.l1_norms_ - ref.l1_norms_).max()
        same = bool(np.array_equal(nc.l1_norms_, ref.l1_norms_) and np.array_equal(nc.n_steps_, ref.n_steps_))
        out(f"    {what:24s} K={nc.label_chunk_size_:<3d} {best[chunk]:7.1f} s  speed-up {best[1] / best[chunk]:5.2f}x  "
            f"{nc.label_steps_:5d} label-steps  max |L1 diff| {diff:.1e}  bit-identical {same}  "
            f"flagged {nc.flagged_labels_}")
    settled, t_settle = fit(model, X, y, device, steps=steps, label_chunk_size="auto", settle_patience=settle_patience)
    out(f"    settle_patience=None    {auto.label_steps_:5d} label-steps {best['auto']:7.1f} s  "
        f"flagged {auto.flagged_labels_}")
    out(f"    settle_patience={settle_patience:<6d}  {settled.label_steps_:5d} label-steps {t_settle:7.1f} s  "
        f"flagged {settled.flagged_labels_}  ({int(settled.settled_.sum())} labels settled, "
        f"{auto.label_steps_ - settled.label_steps_} label-steps saved, "
        f"same flagged {settled.flagged_labels_ == auto.flagged_labels_})")
    return best[1] / best["auto"], best[1] / best[None]


def settle_zoo(split, data, device, settle_patience, output):
    out = Report(output or str(RESULTS / f"nc_settle_{split}.txt"))
    out(f"== settled-label stopping on the {split} zoo: NeuralCleanse(random_state=0) with settle_patience=None "
        f"and {settle_patience}, other parameters at their defaults; a shared machine (timings carry its noise)")
    out(f"  {'entry':40s} {'targets':>8s} {'flagged off':>12s} {'flagged on':>12s} {'steps off':>9s} "
        f"{'steps on':>9s} {'saved':>6s} {'s off':>6s} {'s on':>6s}")
    total = dict(off=0, on=0, t_off=0.0, t_on=0.0, same=0, n=0)
    for spec in zoo_specs(split, data=data):
        zm = load_zoo_model(spec)
        off, t_off = fit(zm.model, zm.X_defender, zm.y_defender, device, settle_patience=None)
        on, t_on = fit(zm.model, zm.X_defender, zm.y_defender, device, settle_patience=settle_patience)
        same = off.flagged_labels_ == on.flagged_labels_
        out(f"  {spec.name:40s} {str(list(spec.target_labels)):>8s} {str(off.flagged_labels_):>12s} "
            f"{str(on.flagged_labels_):>12s} {off.label_steps_:9d} {on.label_steps_:9d} "
            f"{off.label_steps_ - on.label_steps_:6d} {t_off:6.1f} {t_on:6.1f}{'' if same else '  CHANGED'}")
        total["off"] += off.label_steps_
        total["on"] += on.label_steps_
        total["t_off"] += t_off
        total["t_on"] += t_on
        total["same"] += same
        total["n"] += 1
        out.save()
    out(f"  same flagged labels on {total['same']}/{total['n']} entries; label-steps {total['off']} -> {total['on']} "
        f"({100 * (1 - total['on'] / max(total['off'], 1)):.1f}% saved); wall time {total['t_off']:.0f} s -> "
        f"{total['t_on']:.0f} s")
    out.save()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=30, help="step cap of the 28x28 and 32x32 runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--digits-repeats", type=int, default=5,
                        help="repeats on the digits model, whose fits take seconds: two identical "
                             "configurations differed by up to 20%% in best-of-2 timings there")
    parser.add_argument("--settle-patience", type=int, default=10)
    parser.add_argument("--settle-zoo", choices=("development", "held-out"), default=None,
                        help="only the settled-label comparison over this zoo split")
    parser.add_argument("--zoo-data", nargs="*", default=None, help="restrict --settle-zoo to these data sets")
    args, out = parse(parser, "nc_speed")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    if args.settle_zoo:
        settle_zoo(args.settle_zoo, args.zoo_data, dev, args.settle_patience,
                   None if args.output.endswith("nc_speed.txt") else args.output)
        return
    out(f"== Neural Cleanse throughput on {dev}, {torch.get_num_threads()} torch thread(s); a shared machine: "
        "other jobs ran beside it, so timings carry their noise")
    out("   batched: label_chunk_size='auto' and None against 1; then settled-label stopping "
        f"(settle_patience={args.settle_patience}) against none")
    ratios = {}
    digits = make_backdoor_benchmark("digits", random_state=0, device=dev)
    ratios["digits 1x8x8"] = speed(out, "digits 1x8x8, benchmark seed 0", digits.backdoored_model, digits.X_holdout,
                                   digits.y_holdout, dev, 100, max(args.repeats, args.digits_repeats),
                                   args.settle_patience)
    for entry, shape in ((MNIST_ENTRY, "1x28x28"), (SIGNS_ENTRY, "3x32x32")):
        zm = load_zoo_model(entry)
        ratios[f"{entry} {shape}"] = speed(out, f"{entry} {shape}", zm.model, zm.X_defender, zm.y_defender, dev,
                                           args.steps, args.repeats, args.settle_patience)
    out("")
    out("  speed-up of batching over label_chunk_size=1 (goal >= 1.0x on every model, >= 2.5x on digits)")
    for name, (r_auto, r_none) in ratios.items():
        out(f"    {name:40s} auto {r_auto:5.2f}x   None {r_none:5.2f}x")
    out.save()


if __name__ == "__main__":
    main()

"""Repairs on the embedded benchmarks: clean accuracy, attack success and seconds.

Every repair gets the defender's clean hold-out only (10% of the training
set's size) and is measured on the clean and triggered test sets. The paper
figures are printed beside ours.

    python benchmarks/bench_repairs.py [--datasets digits signs] [--seed 0] [--no-cleanse]
        [--no-pruning-aware] [--threads 1]
"""

import argparse
import time

import torch
from _report import parse

from backdoorlearn import FinePruner, NeuralCleanse, NeuronPruner, PruningAwareAttack, SmallCNN, Unlearner
from backdoorlearn.datasets import make_backdoor_benchmark
from backdoorlearn.metrics import attack_success_rate, clean_accuracy

# FinePruner with the paper's plain fine-tuning (AdamW for its SGD): constant rate, no augmentation,
# smoothing or decay.
PLAIN_FINE_TUNING = dict(fine_tune_epochs=30, lr_schedule="constant", label_smoothing=0.0, max_shift=0,
                         noise_std=0.0, weight_decay=0.0)

# Epochs of each of the pruning-aware attack's two trainings and its learning rate
# (as in tests/test_pruning_aware_attack.py; None: the benchmark's training rate).
ATTACK_EPOCHS = {"digits": 20, "signs": 12}
ATTACK_LR = {"digits": None, "signs": 3e-3}
#: Unlearner's fine-tuning before it took FinePruner's: 20 epochs of constant-rate AdamW at 5e-3.
PLAIN_UNLEARNING = dict(PLAIN_FINE_TUNING, fine_tune_epochs=20, lr=5e-3)

PAPER = {
    "backdoored": "-",
    "FinePruner": "Fine-Pruning: ASR ~0%, <= 0.2 pts lost (faces)",
    "pruning alone": "Fine-Pruning: ASR 99%->0% faces, 98%->35% signs",
    "FinePruner, plain fine-tuning": "the paper's plain fine-tuning, with AdamW for its SGD",
    "NeuronPruner (true trigger)": "NC VI-B: ASR ~0% for 5.06 pts lost (GTSRB, 30% pruned)",
    "Unlearner (true trigger)": "NC VI-C original trigger: slightly below reversed",
    "Unlearner (NeuralCleanse)": "NC VI-C: ASR < 6.70%, <= 3.6 pts lost",
    "Unlearner, nothing stamped": "its fine-tuning without the trigger (stamp_fraction=0)",
    "Unlearner, plain fine-tuning": "NC VI-C with constant-rate AdamW (the old default)",
    "clean plain fine-tuning": "NC VI-C: ASR > 93.37% (BadNets)",
    "pruning-aware attack": "Fine-Pruning §4 (adaptive attack)",
    "  then pruning alone": "Fine-Pruning: defeated by the attack",
    "  then FinePruner": "Fine-Pruning: attack success to ~0% (faces)",
}


def run(out, dataset, seed, cleanse, pruning_aware):
    t = time.perf_counter()
    b = make_backdoor_benchmark(dataset, random_state=seed)
    out(f"== {dataset} (seed {seed}): {len(b.X_holdout)} defender images, benchmark built in "
        f"{time.perf_counter() - t:.1f} s")
    m, X, y = b.backdoored_model, b.X_holdout, b.y_holdout
    repairs = [
        ("FinePruner", lambda: FinePruner(random_state=0)),
        ("pruning alone", lambda: FinePruner(fine_tune_epochs=0, random_state=0)),
        ("FinePruner, plain fine-tuning", lambda: FinePruner(random_state=0, **PLAIN_FINE_TUNING)),
        ("NeuronPruner (true trigger)", lambda: NeuronPruner({b.target_label: b.trigger})),
        ("Unlearner (true trigger)", lambda: Unlearner(b.trigger, random_state=0)),
        ("Unlearner, nothing stamped", lambda: Unlearner(b.trigger, stamp_fraction=0.0, random_state=0)),
        ("Unlearner, plain fine-tuning", lambda: Unlearner(b.trigger, random_state=0, **PLAIN_UNLEARNING)),
        ("clean plain fine-tuning", lambda: Unlearner(b.trigger, stamp_fraction=0.0, random_state=0,
                                                      **PLAIN_UNLEARNING)),
    ]
    rows = [("backdoored", m, 0.0, "")]
    if cleanse:
        t = time.perf_counter()
        nc = NeuralCleanse(random_state=0).fit(m, X)
        t_nc = time.perf_counter() - t
        repairs.append(("Unlearner (NeuralCleanse)", lambda: Unlearner(nc, random_state=0)))
    for name, make in repairs:
        t = time.perf_counter()
        r = make().fit(m, X, y)
        secs = time.perf_counter() - t
        note = ""
        if name == "Unlearner (NeuralCleanse)":
            note = f"+{t_nc:.1f} s NeuralCleanse, flagged {nc.flagged_labels_}"
        elif hasattr(r, "pruning_curve_"):
            n_units = len(r.unit_order_)
            note = (f"{100 * r.prune_ratio_:.0f}% of {r.layer_} pruned; "
                    f"{len(r.pruning_curve_.n_pruned)} evaluations for {n_units} units")
        rows.append((name, r.repaired_model_, secs, note))
    if pruning_aware:
        t = time.perf_counter()
        keep = ~b.poison_mask  # the attacker's clean training set
        attack = PruningAwareAttack(
            b.trigger, target_label=b.target_label, module=SmallCNN(b.X_train.shape[1], b.n_classes, **b.module_params),
            clean_epochs=ATTACK_EPOCHS[dataset], poison_epochs=ATTACK_EPOCHS[dataset],
            lr=ATTACK_LR[dataset] or b.train_params["lr"], random_state=0).fit(b.X_train[keep], b.y_train[keep])
        rows.append(("pruning-aware attack", attack.backdoored_model_, time.perf_counter() - t,
                     f"{len(attack.pruned_units_)} decoy channels of {attack.layer_}"))
        for name, kw in (("  then pruning alone", dict(fine_tune_epochs=0)), ("  then FinePruner", {})):
            t = time.perf_counter()
            r = FinePruner(random_state=0, **kw).fit(attack.backdoored_model_, X, y)
            rows.append((name, r.repaired_model_, time.perf_counter() - t,
                         f"{100 * r.prune_ratio_:.0f}% of {r.layer_} pruned"))
    out(f"{'repair':33s} {'clean acc':>9s} {'ASR':>7s} {'seconds':>8s}  paper figure / note")
    for name, model, secs, note in rows:
        acc = clean_accuracy(b.y_test, model.predict(b.X_test))
        asr = attack_success_rate(b.y_test, model.predict(b.X_test_triggered), b.target_label)
        out(f"{name:33s} {100 * acc:8.1f}% {100 * asr:6.1f}% {secs:8.2f}  {PAPER[name]}"
            + (f" [{note}]" if note else ""))
    out("")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "signs"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cleanse", action="store_true", help="skip NeuralCleanse (slow on signs)")
    parser.add_argument("--no-pruning-aware", action="store_true", help="skip the pruning-aware attack")
    args, out = parse(parser, "repairs")
    torch.set_num_threads(args.threads)
    for ds in args.datasets:
        run(out, ds, args.seed, not args.no_cleanse, not args.no_pruning_aware)
    out("clean acc / ASR: on the clean / triggered test set; seconds: the repair's fit")
    out.save()


if __name__ == "__main__":
    main()

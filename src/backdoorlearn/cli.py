"""The ``backdoorlearn`` command (also ``python -m backdoorlearn``).

The commands only parse arguments and call the library: ``audit`` calls
:func:`backdoorlearn.audit.audit_file`, ``evaluate``
:func:`backdoorlearn.grading.evaluate_submission`, ``assignment make`` and
``assignment grade`` :func:`backdoorlearn.grading.make_assignment` and
:func:`backdoorlearn.grading.grade_assignment`.

Exit status: 0 success (for ``audit``: no backdoor found), 1 ``audit`` found a
backdoor, 2 an error (a message on stderr, nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

EXIT_OK, EXIT_BACKDOOR, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

# Errors a user can fix from the message alone; anything else is reported with its traceback.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError, ImportError)


def _demo_steps():
    from ._demo import STEPS

    return [name for name, _ in STEPS]


def _bars(args):
    """Verbosity: 0 with --quiet; 1 (step lines, no bars) when stderr is not a terminal; 2 (bars) on a terminal."""
    if getattr(args, "quiet", False):
        return 0
    return 2 if sys.stderr.isatty() else 1


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _rate(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1); got {value}")
    return value


def build_parser():
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="backdoorlearn",
        description="Defenses against backdoor (trojan) attacks on neural-network classifiers.",
        epilog="Exit status: 0 success (audit: no backdoor found), 1 audit found a backdoor, 2 error.",
    )
    parser.add_argument("--version", action="version", version=f"backdoorlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # ------------------------------------------------------------------ demo
    steps = _demo_steps()
    demo = sub.add_parser(
        "demo",
        help="train a clean and a backdoored model on embedded data and run every defense",
        description="Train a clean and a backdoored model on embedded data and run every defense.",
    )
    demo.add_argument("--dataset", choices=("digits", "signs"), default="digits")
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--step", action="append", dest="steps", metavar="NAME", choices=steps,
                      help="run only this step (repeatable; default: all): "
                           + ", ".join(repr(s) for s in steps))
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    # ------------------------------------------------------------------ audit
    audit = sub.add_parser(
        "audit",
        help="audit a model file for a backdoor (Neural Cleanse; optionally STRIP and a repair)",
        description=(
            "Audit a model file for a backdoor with Neural Cleanse on every label (its fast mode for more than "
            "20 labels), optionally calibrate STRIP and repair the model with fine-pruning. Prints a summary and "
            "writes report.json, report.html (self-contained) and triggers.npz to --out. Exit status: 0 no "
            "backdoor found, 1 backdoor found, 2 error (nothing is written)."
        ),
    )
    audit.add_argument("model", metavar="MODEL",
                       help="a TorchScript archive, a state_dict (with --arch) or a CSAW HackML Keras .h5")
    audit.add_argument("--data", required=True, metavar="CLEAN",
                       help="clean images: .npz with X (and optionally y), a HackML .h5, an MNIST IDX folder, or "
                            "a folder of images (PGM/PPM; PNG, JPEG with Pillow), in the model's input scale")
    _arch_args(audit)
    audit.add_argument("--out", metavar="DIR", help="where the report goes (default: audit-<model name>)")
    audit.add_argument("--nc-steps", type=_positive_int, default=100, metavar="N",
                       help="Neural Cleanse optimization steps per label (default: 100)")
    audit.add_argument("--nc-mode", choices=("auto", "full", "fast"), default="auto",
                       help="Neural Cleanse mode; auto is fast above 20 labels (default: auto)")
    audit.add_argument("--decision-rule", choices=("log-mad", "mad"), default="log-mad",
                       help="Neural Cleanse's decision rule: log-mad scores each label's log norm against the "
                            "others'; mad is the paper's anomaly index (default: log-mad)")
    audit.add_argument("--anomaly-threshold", type=float, default=None, metavar="T",
                       help="score above which a label is flagged (default: 3.5 for log-mad, the paper's 2 "
                            "for mad)")
    audit.add_argument("--max-images", type=_positive_int, metavar="N", help="use at most N clean images")
    audit.add_argument("--strip", action="store_true", help="calibrate STRIP on the clean data")
    audit.add_argument("--strip-perturbations", type=_positive_int, default=100, metavar="N",
                       help="STRIP's superimposed images per input (default: 100)")
    audit.add_argument("--strip-frr", type=_rate, default=0.01, metavar="RATE",
                       help="STRIP's false rejection rate (default: 0.01)")
    audit.add_argument("--repair", choices=("fine-pruning",),
                       help="repair the model and write its weights to DIR/repaired.pt (needs labelled data)")
    audit.add_argument("--repair-epochs", type=_positive_int, metavar="N", help="fine-tuning epochs of the repair")
    _run_args(audit)
    audit.add_argument("--n-jobs", type=int, metavar="N", help="Neural Cleanse's parallel jobs")

    # ------------------------------------------------------------------ evaluate
    evaluate = sub.add_parser(
        "evaluate",
        help="grade a submission on clean and poisoned test data (the CSAW HackML format)",
        description=(
            "Grade a submission as the CSAW HackML challenge does: clean accuracy on the clean test data, attack "
            "success on each poisoned test set (whose labels are the attack's target), and the share of inputs "
            "given the reject label N (the number of classes)."
        ),
    )
    evaluate.add_argument("submission", metavar="SUBMISSION",
                          help="a model file (TorchScript, state_dict with --arch, HackML .h5), or a Python file "
                               "defining predict(X) -> labels (run only with --trust-code)")
    evaluate.add_argument("--clean", required=True, metavar="DATA", help="clean test data, with labels")
    evaluate.add_argument("--poisoned", action="append", default=[], metavar="DATA",
                          help="a poisoned test set whose labels are the attack's target (repeatable)")
    _arch_args(evaluate)
    evaluate.add_argument("--trust-code", action="store_true",
                          help="run a Python submission (it runs with your permissions)")
    evaluate.add_argument("--n-classes", type=_positive_int, metavar="N",
                          help="number of classes N, also the reject label (default: the model's outputs, or the "
                               "largest clean label + 1 for a Python submission)")
    evaluate.add_argument("--target", type=int, metavar="LABEL",
                          help="target label of poisoned sets that hold no labels")
    evaluate.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")

    # ------------------------------------------------------------------ assignment
    assignment = sub.add_parser("assignment", help="make and grade a backdoor assignment for a class",
                                description="Make and grade a backdoor assignment for a class.")
    asub = assignment.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = asub.add_parser(
        "make", help="write mystery models, the students' clean data and the answer key",
        description=(
            "Train K mystery models on one split of a data set, some clean and some backdoored with triggers and "
            "targets drawn as the model zoo draws them; write students/ (models, architecture, clean data, the "
            "task) and instructor/ (answer key, hidden clean and poisoned test sets) under DIR."
        ),
    )
    make.add_argument("directory", metavar="DIR", help="a new (or empty) folder")
    make.add_argument("--n-models", type=_positive_int, default=6, metavar="K", help="number of models (default: 6)")
    make.add_argument("--data", choices=("digits", "signs", "mnist5k"), default="digits")
    make.add_argument("--arch", choices=("small-cnn", "resnet", "vgg", "mlp"), default="small-cnn",
                      help="the zoo architecture of every model (default: small-cnn)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--clean-fraction", type=float, default=1 / 3, metavar="F",
                      help="share of clean models (default: 1/3)")
    make.add_argument("--epochs", type=_positive_int, metavar="N",
                      help="training epochs (default: the zoo's recipe)")
    make.add_argument("--quiet", action="store_true", help="no progress output")
    grade = asub.add_parser(
        "grade", help="grade submissions: detection against the key, repairs on the hidden test sets",
        description=(
            "Grade SUBMISSIONS (one submission folder holding detection.json and/or repaired/, or a folder of "
            "them, one per student) against DIR's answer key and hidden test sets."
        ),
    )
    grade.add_argument("directory", metavar="DIR", help="the assignment folder")
    grade.add_argument("submissions", metavar="SUBMISSIONS")
    grade.add_argument("--trust-code", action="store_true", help="run Python repairs (repaired/<model>.py)")
    grade.add_argument("--json", metavar="FILE", help="write every grade as JSON")
    grade.add_argument("--csv", metavar="FILE", help="write one row per submission and model as CSV")
    grade.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    grade.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def _arch_args(p):
    p.add_argument("--arch", metavar="MODULE:CLASS",
                   help="architecture of a state_dict file, an import path such as backdoorlearn.models:SmallCNN")
    p.add_argument("--arch-kwargs", metavar="JSON", help="its keyword arguments as a JSON object")


def _run_args(p):
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="print the summary only: no step lines or progress bars")


# ---------------------------------------------------------------------- commands
def _run_demo(args, argv):
    from ._demo import run_demo

    run_demo(args.dataset, random_state=args.random_state, steps=args.steps,
             verbose=1 if _bars(args) == 2 else 0)
    return EXIT_OK


def _run_audit(args, argv):
    from .audit import audit_file, format_summary

    out = args.out or f"audit-{os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]}"
    report = audit_file(
        args.model, args.data, arch=args.arch, arch_kwargs=args.arch_kwargs, out=out,
        command=["backdoorlearn", *argv], nc_steps=args.nc_steps, nc_mode=args.nc_mode,
        decision_rule=args.decision_rule, anomaly_threshold=args.anomaly_threshold, max_images=args.max_images, strip=args.strip,
        strip_perturbations=args.strip_perturbations, strip_frr=args.strip_frr, repair=args.repair,
        repair_epochs=args.repair_epochs, random_state=args.random_state, device=args.device, n_jobs=args.n_jobs,
        verbose=_bars(args),
    )
    print(format_summary(report))
    return report["exit_status"]


def _run_evaluate(args, argv):
    from ._output import write_json_atomic
    from .grading import evaluate_submission, format_evaluation, load_submission

    if args.json and os.path.isdir(args.json):
        raise ValueError(f"--json must name a file; {args.json!r} is a folder.")
    sub = load_submission(args.submission, arch=args.arch, arch_kwargs=args.arch_kwargs,
                          trust_code=args.trust_code, device=args.device)
    result = evaluate_submission(sub, args.clean, args.poisoned, n_classes=args.n_classes, target=args.target)
    result["command"] = ["backdoorlearn", *argv]
    print(format_evaluation(result))
    if args.json:
        write_json_atomic(result, args.json)
    return EXIT_OK


def _run_assignment(args, argv):
    from ._output import write_json_atomic, write_text_atomic
    from .grading import format_grades, grade_assignment, grades_csv, make_assignment

    if args.action == "make":
        key = make_assignment(args.directory, n_models=args.n_models, data=args.data, arch=args.arch,
                              seed=args.seed, clean_fraction=args.clean_fraction, epochs=args.epochs,
                              verbose=_bars(args))
        n_bd = sum(m["backdoored"] for m in key["models"].values())
        print(f"Wrote {args.directory}: {len(key['models'])} models ({n_bd} backdoored, "
              f"{len(key['models']) - n_bd} clean).")
        print(f"  hand out:  {os.path.join(args.directory, 'students')}")
        print(f"  keep:      {os.path.join(args.directory, 'instructor')} (answer key, hidden test sets)")
        for name, m in key["models"].items():
            if m.get("note") and m["backdoored"]:
                print(f"  note: {name}: {m['note']}")
        return EXIT_OK
    for option in ("json", "csv"):
        value = getattr(args, option)
        if value and os.path.isdir(value):
            raise ValueError(f"--{option} must name a file; {value!r} is a folder.")
    grades = grade_assignment(args.directory, args.submissions, trust_code=args.trust_code, device=args.device,
                              verbose=0 if args.quiet else 1)
    grades["command"] = ["backdoorlearn", *argv]
    print(format_grades(grades))
    if args.json:
        write_json_atomic(grades, args.json)
    if args.csv:
        write_text_atomic(grades_csv(grades), args.csv)
    return EXIT_OK


_COMMANDS = {"demo": _run_demo, "audit": _run_audit, "evaluate": _run_evaluate, "assignment": _run_assignment}


def main(argv=None):
    """Run the ``backdoorlearn`` command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    name = args.command if args.command != "assignment" else f"assignment {args.action}"
    try:
        return _COMMANDS[args.command](args, argv)
    except KeyboardInterrupt:
        print(f"backdoorlearn {name}: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _USER_ERRORS as exc:
        print(f"backdoorlearn {name}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug, not the user's input: say so, with the traceback, and still exit 2
        traceback.print_exc()
        print(f"backdoorlearn {name}: internal error ({type(exc).__name__}: {exc}); please report it with the "
              "traceback above.", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``backdoorlearn`` command (also ``python -m backdoorlearn``)."""

from __future__ import annotations

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="backdoorlearn",
        description="Defenses against backdoor (trojan) attacks on neural-network classifiers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a clean and a backdoored model on embedded data and run every defense",
    )
    demo.add_argument("--dataset", choices=("digits", "signs"), default="digits")
    demo.add_argument("--random-state", type=int, default=0)
    demo.add_argument("--step", action="append", dest="steps", metavar="NAME",
                      help="run only this step (repeatable); default: all")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.dataset, random_state=args.random_state, steps=args.steps,
                 verbose=0 if args.quiet else 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

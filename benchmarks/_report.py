"""What every benchmark prints also goes to ``benchmarks/results/<name>.txt``.

The documentation includes those files (``literalinclude``), so a measured
figure is written once, by the benchmark, and re-running the benchmark
refreshes every page that shows it. The first lines of a file say which
command produced it and on what.
"""

import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def add_output_argument(parser, name):
    """Add ``--output`` (default ``benchmarks/results/<name>.txt``; ``-`` for none) to ``parser``."""
    parser.add_argument("--output", default=str(RESULTS / f"{name}.txt"),
                        help="file the printed table is written to ('-': print only)")
    return parser


class Report:
    """Print lines and keep them; :meth:`save` writes them after a header naming the command."""

    def __init__(self, output):
        self.output = output
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(str(line))

    def save(self):
        if self.output == "-":
            return
        import torch

        script = os.path.relpath(sys.argv[0], Path(__file__).resolve().parent.parent)
        args = sys.argv[1:]
        header = [
            f"# python {shlex.join([script] + args)}",
            f"# torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPU(s), "
            f"{platform.machine()}",
            "",
        ]
        path = Path(self.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(header + self.lines) + "\n")
        print(f"\n(written to {path})")


def parse(parser, name):
    """Parse the command line of a benchmark with its ``--output`` argument; return (args, report)."""
    add_output_argument(parser, name)
    args = parser.parse_args()
    return args, Report(args.output)


__all__ = ["Report", "add_output_argument", "parse"]

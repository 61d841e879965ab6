"""``backdoorlearn demo``: the attack, then each defense's step, as one table.

Each defense adds one step: a function ``step(bench, *, verbose)`` returning
rows (dicts with "step", "clean accuracy", "attack success", "detail"),
listed in :data:`STEPS` in the order they run.
"""

from __future__ import annotations

import time

from ._abl import abl_rows
from ._attack import attack_rows
from ._bimodel import bimodel_rows
from ._neural_cleanse import neural_cleanse_rows
from ._repair import repair_rows
from ._strip import strip_rows

STEPS = [
    ("BadNets attack", attack_rows),
    ("STRIP", strip_rows),
    ("Neural Cleanse", neural_cleanse_rows),
    ("repairs", repair_rows),
    ("BBD", bimodel_rows),
    ("ABL", abl_rows),
]

_COLUMNS = ("step", "clean accuracy", "attack success", "detail")


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%"
    return str(value)


def format_table(rows):
    """Render rows (dicts keyed by the column names) as a plain-text table."""
    cells = [[_fmt(r.get(c)) for c in _COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
    line = "  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def run_demo(dataset="digits", random_state=0, steps=None, verbose=1, out=print):
    """Build the benchmark, run each step, print and return the rows."""
    from ..datasets import make_backdoor_benchmark

    t0 = time.perf_counter()
    out(f"Building the {dataset} backdoor benchmark (random_state={random_state}): "
        "training a clean and a backdoored SmallCNN ...")
    bench = make_backdoor_benchmark(dataset, random_state=random_state, verbose=verbose)
    out(f"  done in {time.perf_counter() - t0:.1f} s; {len(bench.X_train)} training images, "
        f"{int(bench.poison_mask.sum())} poisoned, target label {bench.target_label}.")
    rows = []
    for name, step in STEPS:
        if steps is not None and name not in steps:
            continue
        t = time.perf_counter()
        out(f"Running: {name} ...")
        new = step(bench, verbose=verbose)
        for r in new:
            r.setdefault("seconds", time.perf_counter() - t)
        rows.extend(new)
    out("")
    out(format_table(rows))
    out(f"\nTotal time: {time.perf_counter() - t0:.1f} s")
    return rows

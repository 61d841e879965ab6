"""STRIP's ``clip_range`` on the model zoo's development entries: the paper's unclipped sum against clipping.

Gao et al. (2019) superimpose two images by adding them
(``cv2.addWeighted(background, 1, overlay, 1, 0)``); on float images that sum
is not clipped and leaves the input range, on ``uint8`` images OpenCV
saturates it at 255. ``STRIPDetector``'s ``clip_range`` chooses between the
two: ``None`` is the unclipped sum, ``"pool"`` clips to the range of the
fitted images (``[0, 1]`` here). This benchmark measures both on the
*development* entries of the zoo (``zoo_specs("development")``), where the
default may be chosen; the held-out entries are reported by ``bench_zoo.py``
with the default only.

For every entry: ``STRIPDetector(model, clip_range=..., random_state=0)``
fitted on the defender's clean images (threshold at 1% false rejections),
then the false acceptance rate of each trigger on the triggered test images
and the false rejection rate on the clean test images. Clean and
source-specific entries are listed but not counted in the summary (a clean
model has no working trigger; a source-specific backdoor is STRIP's known
blind spot).

Run: ``python benchmarks/bench_strip_clip.py [--data digits] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _report import parse
from bench_zoo import strip_rates
from backdoorlearn.datasets import load_zoo_model, zoo_specs

SETTINGS = {"none (paper)": None, "pool": "pool"}


def run_entry(spec):
    zm = load_zoo_model(spec)
    out = {}
    for name, clip in SETTINGS.items():
        t = time.perf_counter()
        frr, fars = strip_rates(zm, clip_range=clip)
        out[name] = dict(frr=frr, far=fars, seconds=time.perf_counter() - t)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="*", default=None, help="only these data sets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args, report = parse(parser, "bench_strip_clip")
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = zoo_specs("development", data=args.data)
    report(f"STRIP's clip_range on the development zoo ({len(specs)} models): FAR of each trigger at the "
           "threshold for 1% FRR on the defender's images, FRR on the clean test images")
    head = "".join(f"{name + ' FAR':>22} {'FRR':>6}" for name in SETTINGS)
    report(f"{'entry':<36} {'trigger':<44}{head}")
    counted = {name: [] for name in SETTINGS}
    for spec in specs:
        res = run_entry(spec)
        cells = ""
        for name in SETTINGS:
            far = ",".join(f"{v:.1%}" for v in res[name]["far"])
            cells += f"{far:>22} {res[name]['frr']:>6.1%}"
            if spec.attack in ("all-to-one", "two-target"):
                counted[name].append(max(res[name]["far"]))
        report(f"{spec.name:<36} {spec.trigger_kind[:44]:<44}{cells}")
    report()
    report("infected all-to-one and two-target entries (worst trigger of each):")
    for name, fars in counted.items():
        fars = np.asarray(fars)
        report(f"  clip_range={name:<14} FAR <= 2%: {int((fars <= 0.02).sum())}/{len(fars)}, "
               f"median FAR {np.median(fars):.1%}, mean FAR {fars.mean():.1%}")
    report.save()


if __name__ == "__main__":
    main()

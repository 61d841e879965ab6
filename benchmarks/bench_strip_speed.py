"""STRIP throughput against the real floor, and adaptive STRIP's perturbations and FAR/FRR.

Speed. STRIP's floor is the forward passes it needs: ``N`` per input. This
times ``STRIPDetector.score_samples(X)`` on ``--n-inputs`` inputs (half
clean test images, half triggered ones) at N=20 and N=100, with
``batch_size="auto"`` (the size the fitted detector's probe chose, shown)
and with the former fixed 1024, against the *fastest* bare-module forward of
the same number of images over batch sizes 16..1024 (the module called in
eval mode under ``no_grad`` on a ready tensor of blended images: no
blending, no gathering, no entropy). Each size is first ranked on a short
run; the two fastest then forward the full ``n x N`` images, and the best of
``--repeats`` runs is the floor. The goal is STRIP <= 1.05 x floor. For
colour images the bare forward is also timed on ``channels_last`` tensors
(PyTorch's CPU convolution and pooling kernels can run much faster on them,
and ``STRIPDetector`` probes that layout too, see ``memory_format_``): the
floor is then the fastest of both layouts, and the contiguous floor is
printed beside it.
Timings are wall clock, best of ``--repeats`` runs interleaved with the
floor's, so a load change on a shared machine hits both.

Quality. Fixed N=100 against ``early_stopping=True`` (rounds of
``stopping_round`` blends up to N=100; same fitted threshold, fit always
uses the fixed N) on every clean test image (FRR) and every triggered test
image (FAR) of the entry: mean perturbations per input and FAR/FRR side by
side. The goal is <= 30% of the perturbations at the same FAR/FRR within
half a point. Triggered images come from the entry's ground truth, used
only to score.

Models: the embedded digits benchmark (``make_backdoor_benchmark("digits")``,
8x8) and two development entries of the model zoo (``--mnist``, 28x28, and
``--signs``, 32x32 colour; the signs entry is scored with
``clip_range=None``, the setting under which STRIP works on it, see
``benchmarks/results/bench_strip_clip.txt``). If IBM ART is importable
(``pip install -e ".[bench]"``; never a dependency of the library), ART's
STRIP (``art.defences.transformer.poisoning.STRIP``, which loops over the
inputs, one model call of N blends each) is timed on the same model, with a
softmax appended since ART takes the entropy of the classifier's output, and
the same inputs, after its ``mitigate`` on the same pool.

    python benchmarks/bench_strip_speed.py [--threads 1] [--n-inputs 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _report import parse
from sklearn.base import clone

from backdoorlearn import STRIPDetector, make_backdoor_benchmark
from backdoorlearn.datasets import load_zoo_model
from backdoorlearn.metrics import false_acceptance_rate, false_rejection_rate
from backdoorlearn.models._batching import DEFAULT_SIZES


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def blended_images(pool, X, count, rng):
    """``count`` real STRIP blends (input + pool image, clipped to [0, 1]), float32."""
    xi, oi = rng.integers(0, len(X), count), rng.integers(0, len(pool), count)
    return torch.from_numpy(np.clip(X[xi] + pool[oi], 0, 1).astype(np.float32))


def bare_forward(module, images, total, size):
    """Forward ``total`` images through ``module`` in batches of ``size`` (cycling over ``images``)."""
    done = 0
    with torch.no_grad():
        while done < total:
            b = min(size, total - done)
            start = done % (len(images) - size + 1) if len(images) > size else 0
            module(images[start : start + b])
            done += b


def layouts(images):
    """The bare forward's images in each memory layout worth timing: channels_last too for colour images."""
    out = {"contiguous": images}
    if images.dim() == 4 and images.shape[1] > 1:
        out["channels_last"] = images.contiguous(memory_format=torch.channels_last)
    return out


def rank_sizes(module, forms, out):
    """Candidates ``(size, layout)`` ordered by bare-forward time per image on a short run (4 x 1024 images each).

    ``forms`` maps each layout to the images in it (:func:`layouts`).
    """
    short = 4 * max(DEFAULT_SIZES)
    per_item = {}
    for layout, imgs in forms.items():
        for size in DEFAULT_SIZES:
            bare_forward(module, imgs, size, size)  # warm-up
            per_item[size, layout] = best_of(lambda: bare_forward(module, imgs, short, size), 2) / short
    ranked = sorted(per_item, key=per_item.get)
    for layout in forms:
        rel = "  ".join(f"{s}:{per_item[s, layout] / per_item[ranked[0]]:.2f}" for s in DEFAULT_SIZES)
        out(f"    bare forward, {layout}, time per image relative to the fastest ({ranked[0][0]}, {ranked[0][1]}): "
            f"{rel}")
    return ranked


def art_time(module, pool, X, n_classes, N, repeats):
    """ART's STRIP (``art.defences.transformer.poisoning.STRIP``) on the same inputs, or None."""
    try:
        from art.defences.transformer.poisoning import STRIP as ArtSTRIP
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    # ART's STRIP takes the entropy of what the classifier predicts: it must output probabilities
    proba = torch.nn.Sequential(module, torch.nn.Softmax(dim=1)).eval()
    clf = PyTorchClassifier(model=proba, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(X.shape[1:]),
                            nb_classes=n_classes, clip_values=(0.0, 1.0))
    defended = ArtSTRIP(clf)(num_samples=N, false_acceptance_rate=0.01)
    defended.mitigate(pool)
    return best_of(lambda: defended.predict(X), repeats)


def speed(out, model, pool, X, args, params):
    module = model.module_.eval()
    images = blended_images(pool, X, 2 * max(DEFAULT_SIZES), np.random.default_rng(0))
    out(f"  speed: {len(X)} inputs (half clean, half triggered), wall clock, best of {args.repeats}")
    forms = layouts(images)
    ranked = rank_sizes(module, forms, out)
    # the two fastest candidates, and the fastest contiguous one (the floor as issue 17 defines it)
    candidates = list(dict.fromkeys(ranked[:2] + [next(c for c in ranked if c[1] == "contiguous")]))
    for N in (20, 100):
        total = N * len(X)
        auto = STRIPDetector(model, n_perturbations=N, random_state=0, **params).fit(pool)
        fixed = STRIPDetector(model, n_perturbations=N, batch_size=1024, random_state=0, **params).fit(pool)
        auto.score_samples(X[:20]), fixed.score_samples(X[:20])  # warm-up
        floors = {c: [] for c in candidates}
        t_auto, t_fixed = [], []
        for _ in range(args.repeats):  # interleaved, so a load change hits all of them
            for s, layout in candidates:
                floors[s, layout].append(timed(lambda: bare_forward(module, forms[layout], total, s)))
            t_auto.append(timed(lambda: auto.score_samples(X)))
            t_fixed.append(timed(lambda: fixed.score_samples(X)))
        best = min(floors, key=lambda c: min(floors[c]))
        contiguous = min((c for c in floors if c[1] == "contiguous"), key=lambda c: min(floors[c]))
        t_floor, t_auto, t_fixed = min(floors[best]), min(t_auto), min(t_fixed)
        t_contig = min(floors[contiguous])
        out(f"    N={N:<3d} floor {t_floor:6.2f} s ({total:,} images, batch {best[0]}, {best[1]}) | "
            f"STRIP auto (batch {auto.batch_size_}, {auto.memory_format_}) {t_auto:6.2f} s = "
            f"{t_auto / t_floor:4.2f}x floor | STRIP batch 1024 {t_fixed:6.2f} s = {t_fixed / t_floor:4.2f}x floor | "
            f"auto is {t_fixed / t_auto:4.2f}x as fast as 1024")
        if best != contiguous:
            out(f"    N={N:<3d} contiguous floor {t_contig:6.2f} s (batch {contiguous[0]}): STRIP auto = "
                f"{t_auto / t_contig:4.2f}x of it")
        t_art = art_time(module, pool, X, auto.n_classes_, N, args.repeats)
        if t_art is None:
            out(f"    N={N:<3d} IBM ART not importable: its STRIP not timed")
        else:
            out(f"    N={N:<3d} IBM ART STRIP {t_art:6.2f} s: STRIP auto is {t_art / t_auto:4.2f}x as fast")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quality(out, model, pool, X_clean, X_trig, params):
    out(f"  quality: {len(X_clean)} clean and {len(X_trig)} triggered test images, threshold at 1% FRR on "
        f"the defender's {len(pool)} clean images")
    fixed = STRIPDetector(model, n_perturbations=100, random_state=0, **params).fit(pool)
    adaptive = clone(fixed).set_params(early_stopping=True).fit(pool)
    assert fixed.threshold_ == adaptive.threshold_  # fit uses the fixed N in both
    rows = []
    for label, det in (("fixed N=100", fixed), ("early_stopping", adaptive)):
        t0 = time.perf_counter()
        sc, cc = det.score_samples_and_counts(X_clean)
        st, ct = det.score_samples_and_counts(X_trig)
        seconds = time.perf_counter() - t0
        clean, trig = (sc < det.threshold_).astype(int), (st < det.threshold_).astype(int)
        frr = false_rejection_rate(np.zeros_like(clean), clean)
        far = false_acceptance_rate(np.ones_like(trig), trig)
        mean = np.concatenate([cc, ct]).mean()
        rows.append((frr, far, mean))
        out(f"    {label:<15s} FRR {100 * frr:5.2f}%  FAR {100 * far:5.2f}%  perturbations/input {mean:6.1f} "
            f"(clean {cc.mean():5.1f}, triggered {ct.mean():5.1f}) {seconds:6.2f} s")
    (fr0, fa0, m0), (fr1, fa1, m1) = rows
    ok = m1 <= 0.3 * m0 and abs(fr1 - fr0) <= 0.005 and abs(fa1 - fa0) <= 0.005
    out(f"    early stopping: {100 * m1 / m0:.1f}% of the perturbations, FRR {100 * (fr1 - fr0):+.2f} pt, "
        f"FAR {100 * (fa1 - fa0):+.2f} pt ({'meets' if ok else 'misses'} the goal: <= 30%, within 0.5 pt)")
    return ok


def models(args):
    b = make_backdoor_benchmark("digits", random_state=0)
    yield ("digits: make_backdoor_benchmark('digits', random_state=0), SmallCNN, 1x8x8", b.backdoored_model,
           b.X_holdout, b.X_test, b.X_test_triggered, {})
    for entry, params in ((args.mnist, {}), (args.signs, {"clip_range": None})):
        zm = load_zoo_model(entry)
        X_trig, _ = zm.triggered_test(0)  # the entry's truth: only to score
        shape = "x".join(map(str, zm.X_test.shape[1:]))
        note = ", clip_range=None (the paper's raw sum: STRIP's better setting on this entry)" if params else ""
        yield (f"{entry} (zoo, development split, {zm.spec.trigger_kind}), {shape}{note}", zm.model,
               zm.X_defender, zm.X_test, X_trig, params)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-inputs", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist", default="dev-mnist5k-small-cnn-patch", help="28x28 zoo entry")
    parser.add_argument("--signs", default="dev-signs-vgg-patch", help="32x32 zoo entry")
    parser.add_argument("--no-quality", action="store_true")
    parser.add_argument("--no-speed", action="store_true")
    args, out = parse(parser, "strip_speed")
    torch.set_num_threads(args.threads)
    out("# wall-clock timings on a machine shared with other jobs: ratios are measured in one run,")
    out("# best of --repeats runs, STRIP and its floor interleaved.")
    start = time.perf_counter()
    for name, model, pool, X_clean, X_trig, params in models(args):
        out(f"== {name}")
        if not args.no_speed:
            half = args.n_inputs // 2
            X = np.concatenate([X_clean[:half], X_trig[: args.n_inputs - half]])
            speed(out, model, pool, X, args, params)
        if not args.no_quality:
            quality(out, model, pool, X_clean, X_trig, params)
    out(f"(whole run: {time.perf_counter() - start:.0f} s)")
    out.save()


if __name__ == "__main__":
    main()

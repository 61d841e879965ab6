"""Audit a model someone else trained: Neural Cleanse, optionally STRIP and a repair, one report."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from .._output import check_output_dir, sha256_path, staged_output, to_jsonable, write_json_atomic
from .._utils import check_images, check_labels

__all__ = ["audit_file", "audit_model"]

#: Above this many labels Neural Cleanse runs its fast mode (Sec. V-B of the paper) under nc_mode="auto".
FAST_MODE_LABELS = 20
_REPAIRS = ("fine-pruning",)
_NC_KNOWN = {"triggers_", "labels_", "pairs_", "l1_norms_", "reversed_attack_success_", "anomaly_indices_",
             "screening_l1_norms_", "anomaly_index_", "flagged_labels_", "flagged_pairs_", "backdoor_detected_",
             "median_l1_norm_", "mad_", "restart_anomaly_indices_", "fully_optimized_", "n_steps_", "n_classes_",
             "decision_scores_", "decision_threshold_", "decision_norm_thresholds_"}
_REPAIR_HOLDOUT = 0.2  # share of the clean data kept out of the repair to measure it
_STRIP_TRIGGERED = 200  # stamped images scored by STRIP for the reversed-trigger histogram


class _Log:
    def __init__(self, verbose):
        self.verbose = verbose

    def __call__(self, message):
        if self.verbose:
            print(message, file=sys.stderr, flush=True)


def audit_model(model, X, y=None, *, out=None, nc_steps=100, nc_mode="auto", decision_rule="log-mad",
                anomaly_threshold=None, max_images=None, strip=False, strip_perturbations=100, strip_frr=0.01, repair=None,
                repair_epochs=None, random_state=0, device="cpu", n_jobs=None, verbose=0):
    """Audit a classifier for a backdoor and return the report as a dict.

    Runs :class:`~backdoorlearn.NeuralCleanse` on every label of the model
    (its fast mode when the model has many labels), then, on request,
    calibrates a :class:`~backdoorlearn.STRIPDetector` on the clean data and
    repairs the model with :class:`~backdoorlearn.FinePruner`. The verdict is
    Neural Cleanse's: ``report["backdoor_detected"]`` and the flagged target
    labels. Everything is checked before the long steps start (the data
    fit the model, labels are in range, the repair can run on this model),
    so a mistake fails in seconds.

    Parameters
    ----------
    model : torch.nn.Module or skorch.NeuralNetClassifier
        The model to audit (white box), returning logits; never modified.
        :func:`backdoorlearn.models.load_model` reads a model file safely.
    X : array-like of shape (n_samples, C, H, W) or (n_samples, H, W)
        Clean images in the model's input scale (for the embedded data and
        the loaders, float32 in [0, 1]).
    y : array-like of shape (n_samples,), default=None
        Their labels. Optional for Neural Cleanse and STRIP (the model's own
        predictions group the images by label); required by ``repair``.
    out : str or path-like, default=None
        Folder to write ``report.json``, ``report.html`` (self-contained,
        figures embedded), ``triggers.npz`` (the reversed masks and patterns)
        and, with ``repair``, ``repaired.pt`` (the repaired weights, a
        state_dict for :func:`~backdoorlearn.models.load_model`). The files
        are written to a temporary folder and moved in at the end: a failed
        audit writes nothing. ``None`` writes nothing.
    nc_steps : int, default=100
        Neural Cleanse's optimization steps per label (``steps``).
    nc_mode : {"auto", "full", "fast"}, default="auto"
        Neural Cleanse's ``mode``; ``"auto"`` is ``"fast"`` for models with
        more than 20 labels, else ``"full"``.
    decision_rule : {"log-mad", "mad"}, default="log-mad"
        Neural Cleanse's ``decision_rule``: which labels are flagged. The
        default scores each label's log norm against the other labels'
        (:func:`~backdoorlearn.inspection.log_anomaly_scores`); ``"mad"`` is
        the paper's anomaly index of the raw norms.
    anomaly_threshold : float, default=None
        Neural Cleanse's ``anomaly_threshold``: the score above which a label
        is flagged; ``None`` is the rule's default (3.5 for ``"log-mad"``,
        the paper's 2 for ``"mad"``).
    max_images : int, default=None
        Use at most this many images of ``X`` (drawn at random); ``None``
        uses all.
    strip : bool, default=False
        Calibrate STRIP on the clean data: its threshold at ``strip_frr``
        and the entropy histogram, with the clean images stamped with the
        reversed trigger of the flagged label when one is flagged.
    strip_perturbations : int, default=100
        STRIP's ``n_perturbations``.
    strip_frr : float, default=0.01
        STRIP's ``false_rejection_rate``.
    repair : {"fine-pruning"} or None, default=None
        Repair the model on 80% of the clean data and measure the repair on
        the other 20%: clean accuracy and the attack success of the reversed
        triggers, before and after. Fine-pruning reads the activations of
        the last convolution (of a hidden linear layer in a model without
        convolutions), so it needs the model as a torch module (not a
        TorchScript archive).
    repair_epochs : int, default=None
        Fine-tuning epochs of the repair; ``None`` keeps FinePruner's.
    random_state : int, default=0
        Seeds every random step (image subsample, Neural Cleanse, STRIP,
        repair split and fine-tuning).
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the tensor work runs.
    n_jobs : int, default=None
        Neural Cleanse's joblib workers.
    verbose : int, default=0
        0 is silent; 1 prints a line per step on stderr; 2 adds progress
        bars for the long steps.

    Returns
    -------
    report : dict
        JSON-ready: ``verdict``, ``backdoor_detected``, ``flagged_labels``,
        ``exit_status`` (1 when a backdoor is found, else 0), ``model`` and
        ``data`` (what was audited), ``clean_accuracy`` (with ``y``),
        ``neural_cleanse`` (every label's L1 norm, anomaly index and
        reversed-trigger success, its decision score and the norm below which
        it is flagged, the paper's anomaly index, the median and the MAD), ``strip`` and ``repair`` (or None), ``warnings``,
        ``environment`` (versions), ``seconds``.

    Raises
    ------
    ValueError
        If the data do not fit the model (shape, labels), the model has fewer
        than 3 labels, or ``repair`` cannot run on this model.
    TypeError
        If ``model`` is not a white-box model.

    See Also
    --------
    audit_file : The same audit from a model file and a data file.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import SmallCNN
    >>> from backdoorlearn.audit import audit_model
    >>> X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    >>> report = audit_model(SmallCNN(1, 4), X, np.arange(40) % 4, nc_steps=2)
    >>> report["verdict"] in ("backdoor found", "no backdoor found")
    True
    >>> len(report["neural_cleanse"]["l1_norms"])
    4
    """
    return _audit(model, X, y, out=out, meta=None, nc_steps=nc_steps, nc_mode=nc_mode,
                  decision_rule=decision_rule, anomaly_threshold=anomaly_threshold, max_images=max_images, strip=strip,
                  strip_perturbations=strip_perturbations, strip_frr=strip_frr, repair=repair,
                  repair_epochs=repair_epochs, random_state=random_state, device=device, n_jobs=n_jobs,
                  verbose=verbose)


def audit_file(model_path, data_path, *, arch=None, arch_kwargs=None, out=None, command=None, **params):
    """Audit a model file on a clean data file and return the report as a dict.

    What ``backdoorlearn audit`` runs: the model file is read with
    :func:`~backdoorlearn.models.load_model` (no unpickling) and the data with
    :func:`~backdoorlearn.datasets.load_data_file`; the report adds both
    files' SHA-256 to what :func:`audit_model` reports.

    Parameters
    ----------
    model_path : str or path-like
        A TorchScript archive, a state_dict (with ``arch``), or a Keras
        ``.h5`` file of the CSAW HackML DeepID.
    data_path : str or path-like
        Clean data: a ``.npz`` with ``X`` (and optionally ``y``), a CSAW
        HackML ``.h5``, an MNIST IDX folder or a folder of images.
    arch : str, default=None
        The architecture of a state_dict, ``"package.module:Class"``.
    arch_kwargs : str or dict, default=None
        Its keyword arguments (a JSON object or a dict).
    out : str or path-like, default=None
        Where the report is written (see :func:`audit_model`).
    command : list of str, default=None
        The command line, recorded in the report.
    **params
        The parameters of :func:`audit_model`.

    Returns
    -------
    report : dict
        As :func:`audit_model`, with the files' paths and SHA-256.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, torch
    >>> from backdoorlearn import SmallCNN
    >>> from backdoorlearn.audit import audit_file
    >>> d = tempfile.mkdtemp()
    >>> torch.save(SmallCNN(1, 4).state_dict(), os.path.join(d, "model.pt"))
    >>> np.savez(os.path.join(d, "clean.npz"), X=np.random.default_rng(0).random((40, 1, 8, 8)),
    ...          y=np.arange(40) % 4)
    >>> report = audit_file(os.path.join(d, "model.pt"), os.path.join(d, "clean.npz"),
    ...                     arch="backdoorlearn.models:SmallCNN", arch_kwargs='{"n_classes": 4}',
    ...                     nc_steps=2)
    >>> report["model"]["kind"], len(report["model"]["sha256"])
    ('state_dict', 64)
    """
    from ..datasets._data_files import _load
    from ..models import load_model
    from ..models._io import _file_kind

    unknown = sorted(set(params) - set(_audit_defaults()))
    if unknown:
        raise TypeError(f"audit_file got unexpected keyword argument(s) {unknown}; it takes those of audit_model.")

    out = None if out is None else check_output_dir(out, name="out")
    device = params.get("device", "cpu")
    kind = _file_kind(os.fspath(model_path))
    model = load_model(model_path, arch=arch, arch_kwargs=arch_kwargs, device=device)
    X, y, data_kind = _load(data_path)
    if isinstance(arch_kwargs, str):
        arch_kwargs = json.loads(arch_kwargs)  # load_model has checked it is a JSON object
    meta = dict(
        model=dict(path=os.fspath(model_path), sha256=sha256_path(model_path), kind=kind,
                   arch=arch if isinstance(arch, str) or arch is None else getattr(arch, "__qualname__", str(arch)),
                   arch_kwargs=arch_kwargs),
        data=dict(path=os.fspath(data_path), sha256=sha256_path(data_path), kind=data_kind),
        command=list(command) if command is not None else None,
        data_name=f"the data {os.fspath(data_path)!r}",
    )
    return _audit(model, X, y, out=out, meta=meta, **{**_audit_defaults(), **params})


def _audit_defaults():
    """audit_model's keyword parameters and their defaults (the ones audit_file passes on)."""
    import inspect

    return {name: p.default for name, p in inspect.signature(audit_model).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "out"}


# ---------------------------------------------------------------------- the audit
def _audit(model, X, y, *, out, meta, nc_steps, nc_mode, decision_rule, anomaly_threshold, max_images, strip,
           strip_perturbations, strip_frr, repair, repair_epochs, random_state, device, n_jobs, verbose):
    from sklearn.utils import check_random_state

    from ..models import ModelAdapter

    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    log = _Log(verbose)
    meta = meta or {}
    data_name = meta.get("data_name", "X")
    if nc_mode not in ("auto", "full", "fast"):
        raise ValueError(f"nc_mode must be 'auto', 'full' or 'fast'; got {nc_mode!r}.")
    if repair is not None and repair not in _REPAIRS:
        raise ValueError(f"repair must be one of {list(_REPAIRS)} or None; got {repair!r}.")
    if max_images is not None and (not isinstance(max_images, (int, np.integer)) or max_images < 3):
        raise ValueError(f"max_images must be an integer >= 3 or None; got {max_images!r}.")
    if out is not None:
        out = check_output_dir(out, name="out")

    adapter = ModelAdapter(model, defense="audit", device=device)
    adapter.require_white_box()
    X = check_images(X, name=data_name, caller="audit", min_samples=3)
    rng = check_random_state(random_state)
    n_given = len(X)
    if max_images is not None and n_given > max_images:
        keep = np.sort(rng.choice(n_given, size=int(max_images), replace=False))
        X = X[keep]
        y = None if y is None else np.asarray(y)[keep]
    warnings_ = []
    n_classes, probabilities = _check_fits(adapter, X, data_name)
    if probabilities:
        warnings_.append("the model's outputs are non-negative and sum to 1 for every image: it seems to return "
                         "probabilities, while backdoorlearn expects logits: their logarithm was used as the logits "
                         "(drop the final softmax).")
    if n_classes < 3:
        raise ValueError(f"the model has {n_classes} output(s); Neural Cleanse needs at least 3 labels to "
                         "compare their trigger norms.")
    if y is not None:
        y = check_labels(y, n_samples=len(X), n_classes=n_classes, name=f"the labels of {data_name}",
                         caller="audit")
    if repair is not None:
        _check_repairable(adapter, y, X, data_name)

    module = adapter.module
    model_info = dict(meta.get("model", {}))
    model_info.update(
        type=type(module).__name__, n_classes=int(n_classes), input_shape=list(X.shape[1:]),
        n_parameters=int(sum(p.numel() for p in module.parameters())),
    )
    data_info = dict(meta.get("data", {}))
    data_info.update(n_images=int(n_given), n_used=int(len(X)), labelled=y is not None,
                     value_range=[float(X.min()), float(X.max())])
    log(f"Auditing a {n_classes}-class model ({model_info['type']}, input {'x'.join(map(str, X.shape[1:]))}) "
        f"on {len(X)} clean images{' with labels' if y is not None else ''}.")
    clean_acc = None
    if y is None:
        predicted = np.unique(adapter.predict(X))
        if predicted.size == 1:
            raise ValueError(
                f"the model predicts label {predicted[0]} for all {len(X)} images of {data_name}, and they have "
                "no labels: Neural Cleanse reverses each label's trigger from images of the other labels. Give "
                "the images' labels, or images the model tells apart."
            )
    else:
        clean_acc = float(np.mean(adapter.predict(X) == y))
        if clean_acc < 0.5:
            warnings_.append(f"the model classifies only {100 * clean_acc:.1f}% of the clean data correctly: "
                             "check that the data are in the model's input scale and its labels are the model's.")

    nc, nc_report = _neural_cleanse(adapter, X, y, n_classes=n_classes, steps=nc_steps, mode=nc_mode,
                                    rule=decision_rule, threshold=anomaly_threshold, rng=rng, device=device, n_jobs=n_jobs,
                                    verbose=verbose, log=log)
    strip_report = None
    if strip:
        strip_report = _strip(adapter, X, nc, perturbations=strip_perturbations, frr=strip_frr, rng=rng,
                              device=device, verbose=verbose, log=log)
    repair_report, repaired = None, None
    if repair is not None:
        repair_report, repaired = _fine_prune(adapter, X, y, nc, epochs=repair_epochs, rng=rng, device=device,
                                              verbose=verbose, log=log)
    detected = bool(nc.backdoor_detected_)
    report = dict(
        report="backdoorlearn audit",
        verdict="backdoor found" if detected else "no backdoor found",
        backdoor_detected=detected,
        flagged_labels=[int(v) for v in nc.flagged_labels_],
        exit_status=1 if detected else 0,
        model=model_info,
        data=data_info,
        clean_accuracy=clean_acc,
        neural_cleanse=nc_report,
        strip=strip_report,
        repair=repair_report,
        warnings=warnings_,
        settings=dict(nc_steps=nc_steps, nc_mode=nc_mode, decision_rule=decision_rule,
                      anomaly_threshold=anomaly_threshold,
                      max_images=max_images, strip=bool(strip), strip_perturbations=strip_perturbations,
                      strip_frr=strip_frr, repair=repair, repair_epochs=repair_epochs,
                      random_state=random_state, device=device, n_jobs=n_jobs),
        command=meta.get("command"),
        environment=_environment(),
        started=started,
        seconds=None,
        out=None if out is None else os.fspath(out),
        files=None,
    )
    report["seconds"] = round(time.perf_counter() - t_start, 3)
    if out is not None:
        report["files"] = _write(report, nc, repaired, out)
        log(f"Report written to {out}.")
    return to_jsonable(report)


def _check_fits(adapter, X, data_name):
    """Number of classes, and whether the outputs look like probabilities; a ValueError if X does not fit."""
    try:
        with torch.no_grad():
            logits = adapter.logits(X[:2])
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{data_name} does not fit the model: images of shape {tuple(X.shape[1:])} (C, H, W) failed in the "
            f"model's forward pass ({first})."
        ) from None
    if logits.ndim != 2:
        raise ValueError(
            f"the model must return logits of shape (n_images, n_classes); for images of shape "
            f"{tuple(X.shape[1:])} it returned shape {tuple(logits.shape)}."
        )
    # the adapter detects probability outputs at the first forward pass (and reads their log as logits)
    probabilities = adapter.returns_probabilities and not adapter.outputs_probabilities
    return int(logits.shape[1]), probabilities


def _check_repairable(adapter, y, X, data_name):
    if y is None:
        raise ValueError(f"repair='fine-pruning' fine-tunes on labelled clean data; {data_name} holds no labels "
                         "(give a .npz with 'y', a HackML .h5, an MNIST folder with its label file, or a folder "
                         "of images with one subfolder per label).")
    if isinstance(adapter.module, torch.jit.ScriptModule):
        raise ValueError("repair='fine-pruning' reads a layer's activations, which a TorchScript module "
                         "does not allow (no forward hooks); give the weights as a state_dict with the "
                         "architecture as code (--arch package.module:Class).")
    from ..repair import FinePruner

    try:
        FinePruner()._site(adapter, X[:1])
    except ValueError as exc:
        raise ValueError(f"repair='fine-pruning' cannot run on this model ({type(adapter.module).__name__}): "
                         f"{exc}") from None
    if len(X) < 10:
        raise ValueError(f"repair='fine-pruning' needs at least 10 labelled clean images (80% to repair, 20% to "
                         f"measure the repair); {data_name} has {len(X)}.")


def _nc_verbose(verbose):
    return 1 if verbose >= 2 else 0


def _neural_cleanse(adapter, X, y, *, n_classes, steps, mode, rule, threshold, rng, device, n_jobs, verbose, log):
    from ..inspection import NeuralCleanse

    mode_ = ("fast" if n_classes > FAST_MODE_LABELS else "full") if mode == "auto" else mode
    log(f"Neural Cleanse: reversing a trigger for each of the {n_classes} labels ({mode_} mode, "
        f"{steps} steps) ...")
    t = time.perf_counter()
    nc = NeuralCleanse(steps=steps, mode=mode_, decision_rule=rule, anomaly_threshold=threshold, device=device, n_jobs=n_jobs,
                       random_state=int(rng.randint(0, 2**31 - 1)), verbose=_nc_verbose(verbose))
    nc.fit(adapter.model, X, y)
    seconds = time.perf_counter() - t
    median, mad = float(nc.median_l1_norm_), float(nc.mad_)
    params = {k: v for k, v in nc.get_params().items() if isinstance(v, (int, float, str, bool, type(None)))}
    extra = {}
    for attr in sorted(vars(nc)):
        if attr.endswith("_") and not attr.startswith("_") and attr not in _NC_KNOWN:
            value = getattr(nc, attr, None)
            if isinstance(value, (bool, int, float, str, np.generic)) or (
                    isinstance(value, (list, tuple, np.ndarray)) and np.asarray(value, dtype=object).size <= 10000):
                extra[attr] = to_jsonable(value)
    log(f"  done in {seconds:.1f} s: anomaly index {nc.anomaly_index_:.2f}, flagged labels "
        f"{list(nc.flagged_labels_) or 'none'}.")
    report = dict(
        mode=mode_, steps=int(steps), params=params,
        labels=nc.labels_, l1_norms=nc.l1_norms_, anomaly_indices=nc.anomaly_indices_,
        reversed_attack_success=nc.reversed_attack_success_, fully_optimized=nc.fully_optimized_,
        n_steps=nc.n_steps_, screening_l1_norms=nc.screening_l1_norms_,
        anomaly_index=float(nc.anomaly_index_), median_l1_norm=median, mad=mad,
        decision_rule=nc.decision_rule, decision_threshold=float(nc.decision_threshold_),
        decision_scores=nc.decision_scores_, norm_thresholds=nc.decision_norm_thresholds_,
        flagged_labels=[int(v) for v in nc.flagged_labels_], backdoor_detected=bool(nc.backdoor_detected_),
        other_attributes=extra, seconds=round(seconds, 3),
    )
    return nc, to_jsonable(report)


def _decision_text(nc):
    """One clause: the largest decision score against the threshold, and the paper's index."""
    scores = np.asarray([np.nan if v is None else v for v in nc["decision_scores"]], dtype=float)
    best = float(np.nanmax(scores)) if np.isfinite(scores).any() else float("nan")
    relation = ">" if best > nc["decision_threshold"] else "<="
    return (f"largest {nc['decision_rule']} decision score {_num(best)} {relation} {_num(nc['decision_threshold'])}; "
            f"the paper's anomaly index {_num(nc['anomaly_index'])}")


def _suspect_label(nc):
    """The label whose reversed trigger the later steps use: the most anomalous flagged one, else the smallest norm."""
    if nc.flagged_labels_:
        return int(nc.flagged_labels_[0])
    return int(nc.labels_[int(np.argmin(nc.l1_norms_))])


def _strip(adapter, X, nc, *, perturbations, frr, rng, device, verbose, log):
    from ..detection import STRIPDetector

    log(f"STRIP: calibrating on the {len(X)} clean images ({perturbations} perturbations each) ...")
    t = time.perf_counter()
    detector = STRIPDetector(adapter.model, n_perturbations=perturbations, false_rejection_rate=frr,
                             device=device, random_state=int(rng.randint(0, 2**31 - 1)),
                             verbose=_nc_verbose(verbose))
    detector.fit(X)
    benign = detector.benign_scores_
    report = dict(
        n_perturbations=int(perturbations), false_rejection_rate_target=float(frr),
        threshold=float(detector.threshold_), n_benign=int(len(benign)), benign_scores=benign,
        benign_flagged_rate=float(np.mean(benign < detector.threshold_)), reversed_trigger=None,
    )
    if nc.backdoor_detected_:
        label = _suspect_label(nc)
        rows = np.flatnonzero(adapter.predict(X) != label)
        if rows.size:
            rows = np.sort(rng.choice(rows, size=min(rows.size, _STRIP_TRIGGERED), replace=False))
            scores = detector.score_samples(nc.reversed_triggers_[label].apply(X[rows]))
            report["reversed_trigger"] = dict(label=label, n=int(rows.size), scores=scores,
                                              flagged_rate=float(np.mean(scores < detector.threshold_)))
    report["seconds"] = round(time.perf_counter() - t, 3)
    log(f"  done in {report['seconds']:.1f} s: threshold {detector.threshold_:.4f} (normalized entropy).")
    return to_jsonable(report)


def _fine_prune(adapter, X, y, nc, *, epochs, rng, device, verbose, log):
    from sklearn.model_selection import train_test_split

    from ..repair import FinePruner

    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    try:
        X_fit, X_eval, y_fit, y_eval = train_test_split(X, y, test_size=_REPAIR_HOLDOUT, stratify=stratify,
                                                        random_state=rng)
    except ValueError:  # too few images per label for a stratified split
        X_fit, X_eval, y_fit, y_eval = train_test_split(X, y, test_size=_REPAIR_HOLDOUT, random_state=rng)
    labels = list(nc.flagged_labels_) or [_suspect_label(nc)]
    monitor = {}
    target = labels[0]
    rows = np.flatnonzero(y_eval != target)
    if rows.size:
        monitor = dict(X_triggered=nc.reversed_triggers_[target].apply(X_eval[rows]), y_triggered=y_eval[rows],
                       target_label=target)
    params = dict(device=device, random_state=int(rng.randint(0, 2**31 - 1)), verbose=_nc_verbose(verbose))
    if epochs is not None:
        params["fine_tune_epochs"] = int(epochs)
    pruner = FinePruner(**params)
    log(f"Fine-pruning on {len(X_fit)} clean images ({pruner.fine_tune_epochs} fine-tuning epochs); "
        f"{len(X_eval)} held out to measure it ...")
    t = time.perf_counter()
    pruner.fit(adapter.model, X_fit, y_fit, **monitor)
    repaired = pruner.repaired_model_
    before = adapter.predict(X_eval)
    after = repaired.predict(X_eval)
    triggered = []
    for label in labels:
        keep = np.flatnonzero(y_eval != label)
        if not keep.size:
            continue
        stamped = nc.reversed_triggers_[label].apply(X_eval[keep])
        triggered.append(dict(label=int(label), n=int(keep.size),
                              before=float(np.mean(adapter.predict(stamped) == label)),
                              after=float(np.mean(repaired.predict(stamped) == label))))
    curve = pruner.pruning_curve_
    report = dict(
        method="fine-pruning", layer=pruner.layer_, pruned_units=pruner.pruned_units_,
        prune_ratio=float(pruner.prune_ratio_), fine_tune_epochs=int(pruner.fine_tune_epochs),
        n_fit=int(len(X_fit)), n_eval=int(len(X_eval)),
        clean_accuracy_before=float(np.mean(before == y_eval)), clean_accuracy_after=float(np.mean(after == y_eval)),
        reversed_trigger_success=triggered,
        pruning_curve=dict(prune_ratio=curve["prune_ratio"], n_pruned=curve["n_pruned"],
                           clean_accuracy=curve["clean_accuracy"], attack_success=curve.get("attack_success"),
                           monitored_label=monitor.get("target_label")),
        seconds=round(time.perf_counter() - t, 3), model_file=None,
    )
    log(f"  done in {report['seconds']:.1f} s: clean accuracy {100 * report['clean_accuracy_before']:.1f}% -> "
        f"{100 * report['clean_accuracy_after']:.1f}% on the held-out images.")
    return to_jsonable(report), repaired


def _environment():
    from importlib import metadata

    from .. import __version__

    versions = {"backdoorlearn": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "numpy", "scikit-learn", "skorch", "h5py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _write(report, nc, repaired, out):
    from ..models import save_weights
    from ._report import render_html

    files = dict(report_json="report.json", report_html="report.html", triggers="triggers.npz")
    with staged_output(out, name="out") as stage:
        keys = list(nc.reversed_triggers_)
        np.savez_compressed(stage / "triggers.npz", labels=np.asarray(keys, dtype=np.int64),
                            masks=np.stack([nc.reversed_triggers_[k].mask for k in keys]).astype(np.float32),
                            patterns=np.stack([nc.reversed_triggers_[k].pattern for k in keys]).astype(np.float32))
        if repaired is not None:
            save_weights(repaired, stage / "repaired.pt")
            files["repaired_model"] = "repaired.pt"
            report["repair"]["model_file"] = "repaired.pt"
        report["files"] = files
        (stage / "report.html").write_text(render_html(to_jsonable(report), nc.reversed_triggers_), encoding="utf-8")
        write_json_atomic(report, stage / "report.json")
    return files


def format_summary(report, *, max_rows=10):
    """The audit as the plain text ``backdoorlearn audit`` prints: what was audited, a table, the verdict.

    Parameters
    ----------
    report : dict
        What :func:`audit_model` or :func:`audit_file` returns.
    max_rows : int, default=10
        Labels shown in the table: the flagged ones, then the smallest norms.

    Returns
    -------
    text : str
        Lines joined by newlines: the model and the clean data audited, the
        Neural Cleanse table of per-label norms, the STRIP and Fine-Pruning
        results when the report holds them, any warnings, and the verdict.

    Examples
    --------
    >>> import numpy as np
    >>> from backdoorlearn import SmallCNN
    >>> from backdoorlearn.audit import audit_model, format_summary
    >>> X = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    >>> report = audit_model(SmallCNN(1, 4), X, np.arange(40) % 4, nc_steps=2)
    >>> print(format_summary(report).splitlines()[0])
    Audit of SmallCNN (4 classes, input 1x8x8)
    """
    nc = report["neural_cleanse"]
    lines = []
    model, data = report["model"], report["data"]
    what = model.get("path") or model["type"]
    kind = f"{model['kind']}, " if model.get("kind") else ""
    lines.append(f"Audit of {what} ({kind}{model['n_classes']} classes, input "
                 f"{'x'.join(map(str, model['input_shape']))})")
    src = data.get("path") or "the given images"
    lines.append(f"  clean data: {src} ({data['n_used']} images"
                 f"{' of ' + str(data['n_images']) if data['n_used'] != data['n_images'] else ''}, "
                 f"{'labelled' if data['labelled'] else 'no labels'})")
    if report.get("clean_accuracy") is not None:
        lines.append(f"  model accuracy on the clean data: {100 * report['clean_accuracy']:.1f}%")
    lines.append("")
    lines.append(f"Neural Cleanse ({len(nc['labels'])} labels, {nc['mode']} mode, {nc['steps']} steps): "
                 f"decision rule {nc['decision_rule']}, threshold {_num(nc['decision_threshold'])}; "
                 f"the paper's anomaly index {_num(nc['anomaly_index'])}")
    order = np.argsort(np.asarray(nc["l1_norms"], dtype=float), kind="stable")
    flagged = set(nc["flagged_labels"])
    shown = [i for i in order if nc["labels"][i] in flagged]
    shown += [i for i in order if i not in shown][: max(0, max_rows - len(shown))]
    rows = [("label", "L1 norm", "decision score", "anomaly index", "reversed-trigger success", "flagged")]
    for i in shown:
        rows.append((str(nc["labels"][i]), f"{nc['l1_norms'][i]:.2f}", _num(nc["decision_scores"][i]),
                     _num(nc["anomaly_indices"][i]),
                     f"{100 * nc['reversed_attack_success'][i]:.1f}%",
                     "yes" if nc["labels"][i] in flagged else ""))
    lines += _table(rows, indent="  ")
    if len(shown) < len(nc["labels"]):
        lines.append(f"  ({len(shown)} smallest norms of {len(nc['labels'])} labels shown; all in report.json)")
    for key, value in nc.get("other_attributes", {}).items():
        if not isinstance(value, list):
            lines.append(f"  {key} = {value}")
    strip = report.get("strip")
    if strip:
        lines.append("")
        text = (f"STRIP ({strip['n_perturbations']} perturbations, FRR {100 * strip['false_rejection_rate_target']:g}%): "
                f"threshold {strip['threshold']:.4f} (normalized entropy)")
        if strip.get("reversed_trigger"):
            rt = strip["reversed_trigger"]
            text += (f"; flags {100 * rt['flagged_rate']:.1f}% of {rt['n']} clean images stamped with label "
                     f"{rt['label']}'s reversed trigger")
        lines.append(text)
    repair = report.get("repair")
    if repair:
        lines.append("")
        lines.append(f"Fine-pruning ({repair['layer']!r}, {100 * repair['prune_ratio']:.1f}% of units pruned, "
                     f"{repair['fine_tune_epochs']} epochs), measured on {repair['n_eval']} held-out images:")
        rows = [("", "before", "after"),
                ("clean accuracy", f"{100 * repair['clean_accuracy_before']:.1f}%",
                 f"{100 * repair['clean_accuracy_after']:.1f}%")]
        for t in repair["reversed_trigger_success"]:
            rows.append((f"label {t['label']} reversed-trigger success", f"{100 * t['before']:.1f}%",
                         f"{100 * t['after']:.1f}%"))
        lines += _table(rows, indent="  ")
    for w in report.get("warnings", []):
        lines.append(f"Warning: {w}")
    lines.append("")
    if report["backdoor_detected"]:
        labels = ", ".join(str(v) for v in report["flagged_labels"])
        lines.append(f"Verdict: BACKDOOR FOUND, target label{'s' if len(report['flagged_labels']) > 1 else ''} "
                     f"{labels} ({_decision_text(nc)})")
    else:
        lines.append(f"Verdict: no backdoor found ({_decision_text(nc)})")
    if report.get("files"):
        where = report.get("out") or ""
        lines.append(f"Report: {os.path.join(where, report['files']['report_html'])}, "
                     f"{os.path.join(where, report['files']['report_json'])}")
    return "\n".join(lines)


def _num(value):
    return "inf" if value is None else f"{value:.2f}"


def _table(rows, indent=""):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [indent + "  ".join(c.ljust(w) for c, w in zip(rows[0], widths)).rstrip()]
    out.append(indent + "  ".join("-" * w for w in widths))
    out += [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows[1:]]
    return out
